"""Z-Image LoRAs: read a file, map it onto the transformer's Linear layers, attach the chosen set."""

from __future__ import annotations

from functools import lru_cache

import torch

from engine.errors import ModelFileError
from engine.lora.adapters import build
from engine.lora.apply import LoadedLora, LoraStack
from engine.lora.format import describe, group_keys, peft_alpha
from engine.lora.library import LoraFile
from engine.weights.safetensors_io import load_tensors, open_weights
from models.z_image import keys as K
from models.z_image import lora_keys as LK

SHOWN = 8  # unmatched layers listed per reason in a warning


def linear_shapes(transformer: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Every Linear (INT8 QLinear included: it subclasses Linear) -> (out_features, in_features)."""
    return {n: (m.out_features, m.in_features) for n, m in transformer.named_modules()
            if isinstance(m, torch.nn.Linear)}


def apply_loras(model, files: list[LoraFile]) -> list[str]:
    """Attach exactly `files` to model.transformer (loading each once); returns their warnings."""
    if model.loras is None:
        if not files:
            return []
        model.loras = LoraStack(model.transformer)
    linears = None
    loaded = []
    for f in files:
        def load(f=f):
            nonlocal linears
            linears = linears or linear_shapes(model.transformer)
            return read_lora(f, linears, model.dtype, model.device)
        loaded.append(model.loras.cached((f.key, str(model.dtype)), load))
    model.loras.activate(loaded)
    return [w for lora in loaded for w in lora.warnings]


def read_lora(file: LoraFile, linears: dict, dtype, device) -> LoadedLora:
    """A LoRA file as adapters for `linears` (module -> (out, in)); ModelFileError when nothing fits."""
    info = open_weights(file.path)
    shapes = {k: v[1] for k, v in info.tensors.items()}
    plan = LK.plan(shapes, linears)
    if not plan.entries:
        raise ModelFileError(file.path, _nothing_fits(info.tensors, plan))
    needed = sorted({key for e in plan.entries for key in e.group.roles.values()})
    tensors = load_tensors(info, needed)
    metadata_alpha = peft_alpha(info.metadata)
    adapters: dict[str, list] = {}
    for entry in plan.entries:
        alpha = _alpha(entry, tensors, shapes, metadata_alpha)
        for target in entry.targets:
            adapters.setdefault(target.module, []).append(
                build(entry.group, tensors, alpha, target.rows, dtype, device))
    groups, _ = group_keys(shapes)
    lora = LoadedLora(file.name, file.path, adapters, description=describe(groups, shapes))
    if plan.skipped:
        lora.warnings.append(_skipped_warning(file.name, plan, len(shapes)))
    return lora


def _alpha(entry, tensors, shapes, metadata_alpha) -> float | None:
    roles = entry.group.roles
    if "alpha" in roles:
        return float(tensors[roles["alpha"]].float().reshape(-1)[0])
    if metadata_alpha and entry.group.kind == "lora":
        return float(metadata_alpha(entry.source, shapes[roles["down"]][0]))
    return None  # no alpha: the factors are used as they are (alpha = rank)


def _nothing_fits(tensors, plan) -> str:
    family = LK.foreign_family(tensors)
    if family:
        return f"this LoRA was made for {family}, not Z-Image"
    groups, _ = group_keys(tensors)
    if not groups:
        foreign = K.describe_foreign(tensors)
        if K.find_transformer(tensors):
            return "this is a whole Z-Image model, not a LoRA: name it in a model JSON instead"
        return foreign or "no LoRA tensors in this file (lora_A/lora_B, lora_down/lora_up, LoKr or LoHa)"
    by_reason: dict[str, str] = {}
    for key, why in plan.skipped:
        by_reason.setdefault(why, key)
    return "none of its layers fits this Z-Image model: " + "; ".join(
        f"{key}: {why}" for why, key in list(by_reason.items())[:3])


def _skipped_warning(name: str, plan, total: int) -> str:
    by_reason: dict[str, list[str]] = {}
    for key, why in plan.skipped:
        by_reason.setdefault(why, []).append(key)
    parts = []
    for why, keys in by_reason.items():
        shown = ", ".join(keys[:SHOWN]) + (f", ... (+{len(keys) - SHOWN})" if len(keys) > SHOWN else "")
        parts.append(f"{why}: {shown}")
    return (f"LoRA {name}: {len(plan.skipped)} of {total} tensors not applied ({plan.modules} layer(s) applied): "
            + "; ".join(parts))


def describe_file(path) -> str:
    """How a LoRA file fits the real Z-Image 6B transformer (header only): 'LoRA, rank 16, 240 layers'
    and how many tensors would not be applied, or why it is not a Z-Image LoRA."""
    try:
        info = open_weights(path)
    except ModelFileError as exc:
        return f"unreadable: {exc.problem}"
    shapes = {k: v[1] for k, v in info.tensors.items()}
    plan = LK.plan(shapes, full_size_linears())
    if not plan.entries:
        return f"not usable: {_nothing_fits(info.tensors, plan)}"
    groups, _ = group_keys(shapes)
    text = describe(groups, shapes)
    return text + (f"; {len(plan.skipped)} tensor(s) would not be applied" if plan.skipped else "")


@lru_cache(maxsize=1)
def full_size_linears() -> dict[str, tuple[int, int]]:
    """Linear shapes of the real 6B transformer, from a model built on the meta device (no memory)."""
    from diffusers import ZImageTransformer2DModel

    from engine.weights.assign import build_empty
    from models.z_image.config import TRANSFORMER_DEFAULTS

    return linear_shapes(build_empty(lambda: ZImageTransformer2DModel(**TRANSFORMER_DEFAULTS)))


def cfg_rows(model, x: torch.Tensor, cond: list, uncond: torch.Tensor) -> dict[int, int]:
    """For a batched CFG pass over [x, x] with captions cond + [uncond] * B: the leading size of each kind of
    Linear input -> how many leading rows are the positive branch's (engine.lora.apply.cfg_batch).

    Blocks see [2B, L, dim] (B rows); the image and caption embedders see all samples' tokens concatenated,
    each sample's image or caption padded to a multiple of 32 tokens, positives first. A size two kinds share
    with different splits is left out (such a layer is then not touched by positive-only LoRAs)."""
    from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF

    def padded(n: int) -> int:
        return n + (-n) % SEQ_MULTI_OF

    batch, patch = x.shape[0], model.transformer.config.all_patch_size[0]
    image = padded((x.shape[-2] // patch) * (x.shape[-1] // patch))
    caption = sum(padded(len(c)) for c in cond)
    splits = [(2 * batch, batch), (2 * batch * image, batch * image), (caption + batch * padded(len(uncond)), caption)]
    rows: dict[int, int] = {}
    for size, positive in splits:
        rows[size] = positive if rows.get(size, positive) == positive else None
    return {k: v for k, v in rows.items() if v is not None}
