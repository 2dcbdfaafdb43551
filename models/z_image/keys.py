"""Pure functions over a weight file's tensor names and shapes: what the file is, and how its names map.

Nothing here reads tensor data, so every check runs on the header before anything is loaded.
A "plan" maps each diffusers name to (source name, row range or None): a row range takes a slice of
a fused tensor (the original code's qkv) without copying it.
"""

from __future__ import annotations

import re

from engine.errors import ModelFileError
from engine.weights.quantization import plain_name

TRANSFORMER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "")
TEXT_ENCODER_PREFIXES = ("text_encoders.qwen3_4b.transformer.", "text_encoder.", "")
VAE_PREFIXES = ("vae.", "first_stage_model.", "")
CONTROL_STEMS = ("control_layers.", "control_noise_refiner.", "control_all_x_embedder.")

# Families users mistake for Z-Image, recognised by a key only they have.
FOREIGN_FAMILIES = [
    ("double_blocks.0.img_attn", "Flux"),
    ("input_blocks.0.0.weight", "Stable Diffusion 1.x/2.x/XL (UNet)"),
    ("conditioner.embedders", "Stable Diffusion XL"),
    ("joint_blocks.0.", "Stable Diffusion 3"),
    ("blocks.0.self_attn.q.weight", "Wan"),
    ("transformer_blocks.0.img_mod", "Qwen-Image"),
    ("layers.0.adaLN_modulation.1.weight", "Lumina 2"),
    ("siglip_embedder.", "Z-Image Omni (not supported yet)"),
    ("control_all_x_embedder.", "a Fun-ControlNet control module (it belongs in a control model type's \"modules\")"),
]
LORA_MARKERS = ("lora_A.", "lora_B.", "lora_down.", "lora_up.", ".lokr_", ".hada_")
# quanto INT8, ComfyUI fp8 (plain, scaled, mixed) and GGUF files are read (engine.weights.schemes); Nunchaku
# SVDQ files only as a transformer (models.z_image.nunchaku)
QUANT_MARKERS = [
    (".qweight", "a Nunchaku SVDQ transformer file: it loads only as a Z-Image transformer, through the nunchaku "
                 "package"),
]
NUNCHAKU_KEYS = (".qweight", ".wscales")


def has(keys, fragment: str, prefix: str = "") -> bool:
    return any(k.startswith(prefix) and fragment in k[len(prefix):] for k in keys)


def describe_foreign(keys) -> str | None:
    """A sentence naming what a non-Z-Image file is, if recognisable."""
    for marker, family in FOREIGN_FAMILIES:
        if has(keys, marker):
            return f"this is a {family} file, not a Z-Image one" if not family.startswith("a ") \
                else f"this is {family}"
    if has(keys, ".lora_") or any(m in k for k in keys for m in LORA_MARKERS):
        return "this is a LoRA, not a model: put it in the LoRA folder instead"
    return None


def is_nunchaku(keys) -> bool:
    """A Nunchaku SVDQ file (4-bit `qweight` with `wscales`)."""
    return any(k.endswith(NUNCHAKU_KEYS[0]) for k in keys) and any(k.endswith(NUNCHAKU_KEYS[1]) for k in keys)


def check_supported_format(path, keys) -> None:
    for marker, message in QUANT_MARKERS:
        if has(keys, marker):
            raise ModelFileError(path, f"this is {message}")


def plain_keys(keys) -> set[str]:
    """Names as an unquantized file has them (an INT8 weight's `.weight._data` read as `.weight`)."""
    return {plain_name(k) for k in keys}


def _find_prefix(keys, prefixes, probe: str) -> str | None:
    for prefix in prefixes:
        if prefix + probe in keys:
            return prefix
    return None


# ---- transformer -------------------------------------------------------------------------------

def find_transformer(keys) -> tuple[str, str] | None:
    """(prefix, "diffusers" | "original") of the transformer inside a file, or None."""
    keys = plain_keys(keys)
    for probe, style in (("all_x_embedder.2-1.weight", "diffusers"), ("x_embedder.weight", "original")):
        prefix = _find_prefix(keys, TRANSFORMER_PREFIXES, probe)
        if prefix is not None and prefix + "cap_embedder.1.weight" in keys:
            return prefix, style
    return None


_RENAMES = [
    (re.compile(r"^x_embedder\."), "all_x_embedder.2-1."),
    (re.compile(r"^final_layer\."), "all_final_layer.2-1."),
    (re.compile(r"\.attention\.out\."), ".attention.to_out.0."),
    (re.compile(r"\.attention\.q_norm\."), ".attention.norm_q."),
    (re.compile(r"\.attention\.k_norm\."), ".attention.norm_k."),
]
_DROPPED = {"norm_final.weight"}  # a stray tensor in some ComfyUI exports; the model has none


def transformer_plan(shapes: dict, prefix: str, style: str) -> dict:
    """diffusers name -> (source name, row range | None) for the transformer part of a file."""
    plan = {}
    embedder = f"{prefix}{'all_x_embedder.2-1' if style == 'diffusers' else 'x_embedder'}.weight"
    dim = (shapes.get(embedder) or shapes[embedder + "._data"])[0]
    for src, shape in shapes.items():
        if not src.startswith(prefix):
            continue
        name = src[len(prefix):]
        if name.startswith(CONTROL_STEMS):  # a file holding a control module too: loaded by control_loader
            continue
        if style == "original":
            if name in _DROPPED:
                continue
            if ".attention.qkv." in name:
                plan.update(_split_qkv(src, name, shape, dim))
                continue
            name = original_to_diffusers(name)
        plan[name] = (src, None)
    return plan


def original_to_diffusers(name: str) -> str:
    """An original/ComfyUI tensor name -> its diffusers name (fused qkv aside)."""
    for pattern, repl in _RENAMES:
        name = pattern.sub(repl, name)
    return name


def _split_qkv(src: str, name: str, shape: tuple, dim: int) -> dict:
    """A fused qkv tensor's rows in three (a weight, or INT8 / fp8 data with its per-row scales); a scalar scale
    and a layer's quantization config (ComfyUI's `comfy_quant` JSON bytes) are shared by the three."""
    base, _, suffix = name.partition(".attention.qkv.")
    if suffix == "comfy_quant":
        shape = ()
    rows = shape[0] if shape else 0
    kv = (rows - dim) // 2  # grouped-query files have shorter k and v
    ranges = {"to_q": (0, dim), "to_k": (dim, dim + kv), "to_v": (dim + kv, rows)}
    return {f"{base}.attention.{part}.{suffix}": (src, r if shape else None) for part, r in ranges.items()}


def plan_shapes(plan: dict, shapes: dict) -> dict:
    """The shape each planned tensor will have."""
    out = {}
    for name, (src, rows) in plan.items():
        shape = shapes[src]
        out[name] = shape if rows is None else (rows[1] - rows[0], *shape[1:])
    return out


def count_blocks(names, stem: str) -> int:
    idx = {int(m.group(1)) for n in names for m in [re.match(rf"^{re.escape(stem)}\.(\d+)\.", n)] if m}
    return max(idx) + 1 if idx else 0


# ---- text encoder (Qwen3) ----------------------------------------------------------------------

def find_text_encoder(keys) -> str | None:
    """The prefix before `model.embed_tokens.weight` (Qwen3ForCausalLM names), or None."""
    keys = plain_keys(keys)
    for prefix in TEXT_ENCODER_PREFIXES:
        if prefix + "model.embed_tokens.weight" in keys and prefix + "model.layers.0.self_attn.q_proj.weight" in keys:
            return prefix
    if "embed_tokens.weight" in keys and "layers.0.self_attn.q_proj.weight" in keys:
        return "-"  # Qwen3Model names without "model.": add it
    return None


def text_encoder_plan(keys, prefix: str) -> dict:
    if prefix == "-":
        return {f"model.{k}": (k, None) for k in keys if not k.startswith("lm_head.")} | (
            {"lm_head.weight": ("lm_head.weight", None)} if "lm_head.weight" in keys else {})
    return {k[len(prefix):]: (k, None) for k in keys if k.startswith(prefix) and k != prefix + "logit_scale"}


# ---- VAE ---------------------------------------------------------------------------------------

def find_vae(keys) -> tuple[str, str] | None:
    """(prefix, "diffusers" | "ldm") of a VAE inside a file, or None."""
    keys = plain_keys(keys)
    for probe, style in (("encoder.down_blocks.0.resnets.0.conv1.weight", "diffusers"),
                         ("encoder.down.0.block.0.conv1.weight", "ldm")):
        prefix = _find_prefix(keys, VAE_PREFIXES, probe)
        if prefix is not None:
            return prefix, style
    return None


def components_in(keys) -> list[str]:
    """Which Z-Image components a file holds (an all-in-one checkpoint holds all three)."""
    found = []
    if find_transformer(keys):
        found.append("transformer")
    if find_text_encoder(keys) is not None:  # "" (no prefix) is a match
        found.append("text_encoder")
    if find_vae(keys):
        found.append("vae")
    return found
