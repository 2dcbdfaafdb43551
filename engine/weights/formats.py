"""Which kind of weight file a file is, for choosing between a component's alternatives and for listings.

Kinds: "bf16" (unquantized, whatever its float precision), "int8" (quanto, Wan2GP's), "fp8" (ComfyUI's plain,
scaled or mixed fp8), "gguf" (llama.cpp / ComfyUI-GGUF), "nunchaku" (SVDQ int4/fp4). A file on disk is judged by
its header; a file still to download by its name.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import ModelFileError

KINDS = ("bf16", "int8", "fp8", "gguf", "nunchaku")
_NAME_MARKERS = (("gguf", (".gguf",)), ("nunchaku", ("svdq", "nunchaku")), ("int8", ("int8", "quanto")),
                 ("fp8", ("fp8", "float8", "e4m3", "e5m2")))
NUNCHAKU_KEYS = (".qweight", ".wscales")
QUANTO_DATA = ".weight._data"  # engine.weights.quantization.DATA (not imported: it asks this module for kinds)


def kind_from_name(name: str) -> str:
    lowered = Path(name).name.lower()
    for kind, markers in _NAME_MARKERS:
        if any(m in lowered for m in markers):
            return kind
    return "bf16"


def kind_of_info(info) -> str:
    """The kind of a file from its parsed header (engine.weights.safetensors_io.TensorFileInfo)."""
    from engine.weights import fp8

    if info.format == "gguf":
        return "gguf"
    keys = info.tensors
    if any(k.endswith(NUNCHAKU_KEYS) for k in keys):
        return "nunchaku"
    if any(k.endswith(QUANTO_DATA) for k in keys):
        return "int8"
    if fp8.is_fp8_file(keys, info.metadata):
        return "fp8"
    return "bf16"


def kind_of(name: str, path: Path | None = None) -> str:
    """The kind of a file: from its header when it is on disk, else from its name."""
    if path is not None and Path(path).is_file():
        from engine.weights.safetensors_io import open_weights

        try:
            return kind_of_info(open_weights(path))
        except ModelFileError:
            pass  # a damaged file is reported when it is loaded
    return kind_from_name(name)


def describe(path: Path) -> str:
    """A few words on a file on disk: its kind and, for quantized kinds, the variant (`gguf Q4_K_M`,
    `fp8 scaled e4m3fn`, `nunchaku int4 r256`); "" when the header cannot be read."""
    from engine.weights.safetensors_io import open_weights

    try:
        info = open_weights(path)
    except ModelFileError:
        return ""
    kind = kind_of_info(info)
    if kind == "gguf":
        from engine.weights.gguf_io import quant_summary

        return f"gguf {quant_summary(info)}"
    if kind == "fp8":
        return "fp8 " + _fp8_variant(info)
    if kind == "nunchaku":
        from engine.weights.nunchaku_files import svdq_variant

        return "nunchaku " + svdq_variant(info)
    return kind


def _fp8_variant(info) -> str:
    keys = info.tensors
    if "_quantization_metadata" in info.metadata or any(k.endswith(".comfy_quant") for k in keys):
        return "mixed"
    storage = "e5m2" if any(d == "F8_E5M2" for d, _ in keys.values()) else "e4m3fn"
    scaled = any(k.endswith(".scale_weight") or k.endswith(".weight_scale") for k in keys)
    return f"scaled {storage}" if scaled else storage
