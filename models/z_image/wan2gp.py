"""Wan2GP's conventions for Z-Image model JSONs (its defaults/z_image*.json and models/z_image/ handler):

- TwinFlow is architecture "z_image" with `"unified_solver": true` (TwinFlow's sampler): here the
  z_image_twinflow_turbo architecture;
- `sample_solver`: "default" (flow Euler), "unified", "unified_2s", "unified_4s", "twinflow" (TwinFlow's);
- `modules`: a list of modules, each a list of alternative files (bf16, INT8) or another type's name;
  Z-Image has one (the Fun-ControlNet-Union module);
- components left out: the text encoder (Qwen3, bf16 and INT8), its tokenizer and the VAE come from Wan2GP's
  handler (query_model_def / query_model_files), the same files the shipped z_image type names.
"""

from __future__ import annotations

from engine.errors import ModelDefinitionError

_REPO = "https://huggingface.co/DeepBeepMeep/Z-Image"
COMPONENT_DEFAULTS = {  # what Wan2GP's z_image handler supplies, in its ckpts/ layout
    "text_encoder_URLs": [f"{_REPO}/resolve/main/Qwen3/qwen3_bf16.safetensors",
                          f"{_REPO}/resolve/main/Qwen3/qwen3_quanto_bf16_int8.safetensors"],
    "vae_URLs": f"{_REPO}/resolve/main/ZImageTurbo_VAE_bf16.safetensors",
    "tokenizer": f"{_REPO}/tree/main/Qwen3",
}
COMPONENT_SIZES = {"qwen3_bf16.safetensors": 8050000000, "qwen3_quanto_bf16_int8.safetensors": 4400000000,
                   "ZImageTurbo_VAE_bf16.safetensors": 168000000}
UNIFIED_SOLVERS = ("unified", "twinflow")
TWINFLOW = "z_image_twinflow_turbo"


def adopt(model: dict, settings: dict, where: str) -> tuple[dict, dict, list[str]]:
    """(model block, settings, notes) in this app's terms."""
    model, settings, notes = dict(model), dict(settings), []
    if model.pop("unified_solver", False):
        if model.get("architecture") not in ("z_image", TWINFLOW):
            raise ModelDefinitionError(f"{where}: \"unified_solver\" (TwinFlow's sampler) needs a TwinFlow "
                                       f"transformer: architecture z_image, not {model.get('architecture')}")
        model["architecture"] = TWINFLOW
    solver = settings.pop("sample_solver", None)
    if solver:
        name = str(solver).strip().lower()
        if name.startswith(UNIFIED_SOLVERS):
            if model.get("architecture") != TWINFLOW:
                raise ModelDefinitionError(f"{where}: sample_solver {solver!r} is TwinFlow's sampler; this type's "
                                           "architecture has none (add \"unified_solver\": true for TwinFlow)")
            settings.setdefault("sampler", "twinflow")
        elif name != "default":
            settings.setdefault("sampler", name)
    if "modules" in model:
        model["modules"] = _one_module(model["modules"], where)
    sizes = dict(model.get("file_sizes") or {})
    for field, value in COMPONENT_DEFAULTS.items():
        if field not in model:
            model[field] = value
            sizes.update({k: v for k, v in COMPONENT_SIZES.items() if k in str(value)})
    if sizes and isinstance(model.get("file_sizes", {}), dict):
        model["file_sizes"] = {**sizes, **(model.get("file_sizes") or {})}
    return model, settings, notes


def _one_module(value, where: str):
    """Wan2GP's [[bf16, int8]] (one module, its alternatives) or ["other_type"] -> this app's list or type name."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise ModelDefinitionError(f"{where}: \"modules\" must list the control module's files")
    if all(isinstance(v, str) for v in value):
        if len(value) == 1 and "/" not in value[0] and "." not in value[0]:
            return value[0]  # Wan2GP: a module given by another model type's name
        return value  # this app's form: the alternatives of the one module
    if len(value) != 1:
        raise ModelDefinitionError(f"{where}: \"modules\" lists {len(value)} modules; Z-Image takes one control "
                                   "module (a list of its alternative files)")
    inner = value[0]
    if not isinstance(inner, list) or not all(isinstance(v, str) for v in inner):
        raise ModelDefinitionError(f"{where}: \"modules\" must be [[file, alternative file, ...]], got "
                                   f"{str(value)[:80]}")
    return inner
