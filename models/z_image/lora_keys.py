"""Which Z-Image layer each LoRA key means: pure functions over key names and shapes, no tensors.

Every trainer's spelling is mapped onto diffusers' ZImageTransformer2DModel Linear names:
  diffusers/PEFT   transformer.layers.0.attention.to_q.lora_A.weight
  ComfyUI/original diffusion_model.layers.0.attention.qkv.lora_down.weight (+ .alpha); attention.out, x_embedder
  kohya/musubi     lora_unet_layers_0_attention_to_q.lora_down.weight (dots written as underscores)
  LyCORIS          lycoris_layers_0_attention_to_q.lokr_w1 / .hada_w1_a / .diff
A fused `attention.qkv` delta is split onto to_q/to_k/to_v by output rows. Keys that fit no layer are
returned with the reason, for a warning; a file for another family is named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine.lora.format import Group, delta_shape, group_keys
from models.z_image import keys as K

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.", "unet.",
            "lora_unet_", "lora_transformer_", "lycoris_", "")
TEXT_ENCODER_PREFIXES = ("text_encoder.", "text_encoders.", "lora_te_", "lora_te1_", "lora_te2_", "te.",
                         "cond_stage_model.", "conditioner.")
# diffusers name -> original name (checked against keys.original_to_diffusers, so the two cannot drift)
_TO_ORIGINAL = [(re.compile(r"\.attention\.to_out\.0$"), ".attention.out"),
                (re.compile(r"^all_x_embedder\.2-1$"), "x_embedder"),
                (re.compile(r"^all_final_layer\.2-1\."), "final_layer.")]
# Other families, recognised by module names Z-Image does not have (keys with dots written as "_").
FOREIGN = [
    (r"individual_token_refiner|txt_in_", "HunyuanVideo"),
    (r"distilled_guidance_layer", "Chroma"),
    (r"(^|_)(double_blocks|single_blocks|single_transformer_blocks)_\d", "Flux"),
    (r"(^|_)joint_blocks_\d", "Stable Diffusion 3"),
    (r"(^|_)(input_blocks|output_blocks|middle_block|down_blocks|up_blocks|mid_block)_", "Stable Diffusion 1.x/2.x/XL"),
    (r"(^|_)transformer_blocks_\d+_(img_mlp|txt_mlp|img_mod|txt_mod)", "Qwen-Image"),
    (r"(^|_)blocks_\d+_(self_attn|cross_attn|ffn)_", "Wan"),
    (r"(^|_)(layers|noise_refiner|context_refiner)_\d+_(adaLN_modulation_1|attn_to_[qkv]|feed_forward_linear_)",
     "Lumina 2"),
    (r"(^|_)transformer_blocks_\d", "another DiT model (Flux, SD3, PixArt, LTX-Video, ...)"),
]


@dataclass(frozen=True)
class Target:
    module: str  # diffusers Linear name
    rows: tuple[int, int] | None = None  # output rows of a fused delta that belong to this module


@dataclass
class Entry:
    group: Group
    source: str  # the module name as the file spells it, prefix removed (for PEFT alpha patterns)
    targets: list[Target]


@dataclass
class LoraPlan:
    entries: list[Entry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)

    @property
    def modules(self) -> int:
        return sum(len(e.targets) for e in self.entries)


def canonical(name: str) -> str:
    return name.replace(".", "_")


def aliases(linears: dict) -> dict[str, list[Target]]:
    """Every spelling of every Linear (diffusers, original, fused qkv) -> its target(s).

    linears: diffusers module name -> (out_features, in_features)."""
    table: dict[str, list[Target]] = {}
    for name in linears:
        table[name] = [Target(name)]
        original = name
        for pattern, repl in _TO_ORIGINAL:
            original = pattern.sub(repl, original)
        if original != name and K.original_to_diffusers(original + ".weight") == name + ".weight":
            table[original] = [Target(name)]
        if name.endswith(".attention.to_q"):
            block = name[: -len(".to_q")]
            parts = [f"{block}.to_{p}" for p in "qkv"]
            if all(p in linears and linears[p][1] == linears[name][1] for p in parts):
                start, targets = 0, []
                for p in parts:
                    targets.append(Target(p, (start, start + linears[p][0])))
                    start += linears[p][0]
                table[f"{block}.qkv"] = targets
    return table


def _canonical_table(table: dict) -> dict[str, str]:
    """kohya spelling -> alias; a spelling two aliases share is left out rather than guessed."""
    out: dict[str, str | None] = {}
    for alias in table:
        c = canonical(alias)
        out[c] = None if c in out and out[c] != alias else alias
    return {k: v for k, v in out.items() if v is not None}


def resolve_stem(stem: str, table: dict, canon: dict) -> tuple[str, list[Target]] | None:
    """(the file's module name without prefix, targets) for a group stem, or None."""
    for prefix in PREFIXES:
        if not stem.startswith(prefix):
            continue
        rest = stem[len(prefix):]
        if rest in table:
            return rest, table[rest]
        if canonical(rest) in canon:
            return rest, table[canon[canonical(rest)]]
    return None


def plan(shapes: dict, linears: dict) -> LoraPlan:
    """Map a LoRA file onto the model. shapes: file key -> shape; linears: module -> (out, in)."""
    groups, loose = group_keys(shapes)
    table = aliases(linears)
    canon = _canonical_table(table)
    result = LoraPlan(skipped=[(k, "not a LoRA tensor") for k in loose])
    candidates = []
    for group in groups.values():
        reason = group.problem()
        found = None if reason else resolve_stem(group.stem, table, canon)
        if reason is None and found is None:
            reason = _why_unmatched(group.stem)
        if reason is None:
            reason = _shape_problem(group, shapes, found[1], linears)
        if reason:
            result.skipped += [(k, reason) for k in sorted(group.roles.values())]
        else:
            candidates.append(Entry(group, *found))
    # A file may hold a layer twice (fused qkv beside to_q/k/v, `out` beside `to_out.0`): the diffusers
    # spelling wins, then other single-layer spellings; applying both would double the effect.
    candidates.sort(key=lambda e: (_spelling_rank(e), e.group.stem))
    claimed: dict[str, str] = {}
    for entry in candidates:
        taken = [claimed[t.module] for t in entry.targets if t.module in claimed]
        if taken:
            why = f"duplicate of {taken[0]} (left out so the layer is not changed twice)"
            result.skipped += [(k, why) for k in sorted(entry.group.roles.values())]
            continue
        claimed.update({t.module: entry.group.stem for t in entry.targets})
        result.entries.append(entry)
    result.entries.sort(key=lambda e: e.group.stem)
    return result


def _spelling_rank(entry: Entry) -> int:
    """0: diffusers name (dots or underscores), 1: original name, 2: fused qkv."""
    if len(entry.targets) > 1:
        return 2
    return 0 if canonical(entry.source) == canonical(entry.targets[0].module) else 1


def _why_unmatched(stem: str) -> str:
    if stem.startswith(TEXT_ENCODER_PREFIXES):
        return "a text-encoder layer (LoRAs are applied to the transformer only)"
    return "matches no layer of this model"


def _shape_problem(group: Group, shapes: dict, targets: list[Target], linears: dict) -> str | None:
    got = delta_shape(group, shapes)
    if got is None:
        return "its tensors' shapes do not fit together (damaged?)"
    first = linears[targets[0].module]
    want = (sum(linears[t.module][0] for t in targets), first[1])
    if got[0] != want[0] or (got[1] is not None and got[1] != want[1]):
        return (f"shape {got[0]}x{got[1]} does not fit {', '.join(t.module for t in targets)} "
                f"({want[0]}x{want[1]}): made for another model size")
    return None


def foreign_family(keys) -> str | None:
    """The family a LoRA was made for, when its names say it is not Z-Image."""
    keys = list(keys)
    if any(k.startswith(("lora_te1_", "lora_te2_")) for k in keys):
        return "Stable Diffusion XL"
    stems = []
    for key in keys:
        stem = key
        for prefix in PREFIXES:
            if prefix and key.startswith(prefix):
                stem = key[len(prefix):]
                break
        stems.append(canonical(stem))
    for pattern, family in FOREIGN:
        rx = re.compile(pattern)
        if any(rx.search(s) for s in stems):
            return family
    return None
