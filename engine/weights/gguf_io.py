"""GGUF files (llama.cpp's format, as ComfyUI-GGUF, stable-diffusion.cpp and llama.cpp write them).

The header is read into the same TensorFileInfo a safetensors header gives (names, logical shapes, the
quantization type as the dtype), so every name and shape check runs before any weight is touched. Tensors are
the `gguf` package's memory-mapped views: float ones become torch tensors without a copy, quantized ones stay as
their raw blocks inside diffusers' GGUFParameter, dequantized one layer at a time when used
(engine.weights.gguf_layers).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from engine.errors import ModelFileError
from engine.weights.file_info import TensorFileInfo

MAGIC = b"GGUF"
FLOAT_TYPES = ("F32", "F16", "BF16")
_INSTALL_HINT = "reading GGUF files needs the `gguf` package: pip install gguf (see requirements.txt)"
_ORIG_SHAPE = "comfy.gguf.orig_shape."  # ComfyUI-GGUF stores the shape of tensors it reshaped for quantization


def is_gguf(path) -> bool:
    """A GGUF file by its name, or by its first bytes (a renamed file)."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except OSError:
        return False


def _reader(path: Path):
    try:
        import gguf
    except ImportError:
        raise ModelFileError(path, _INSTALL_HINT) from None
    with open(path, "rb") as fh:
        if fh.read(4) != MAGIC:
            raise ModelFileError(path, "not a GGUF file (it does not start with 'GGUF'): the file is damaged or "
                                       "has the wrong extension")
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError/IndexError/... on damaged headers
        raise ModelFileError(path, f"damaged or truncated GGUF header ({type(exc).__name__}: {exc})") from None


def supported_types() -> set[str]:
    """GGML tensor types this app can use: floats, and the ones diffusers' GGUF code dequantizes."""
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES

    return set(FLOAT_TYPES) | {t.name for t in SUPPORTED_GGUF_QUANT_TYPES}


def read_gguf_header(path) -> TensorFileInfo:
    """Names, logical shapes ([out, in] like torch) and GGML types of a GGUF file's tensors, plus its scalar
    metadata (general.architecture, qwen3.block_count, ...) as text. Raises ModelFileError naming what is wrong."""
    path = Path(path)
    size = path.stat().st_size
    reader = _reader(path)
    tensors, offsets = {}, {}
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ModelFileError(path, f"truncated (incomplete download?): tensor {t.name} ends at byte "
                                       f"{t.data_offset + t.n_bytes:,}, the file has {size:,}")
        shape = _orig_shape(reader, t.name) or tuple(int(d) for d in reversed(t.shape.tolist()))
        tensors[t.name] = (t.tensor_type.name, shape)
        offsets[t.name] = (int(t.data_offset), int(t.n_bytes))
    unsupported = sorted({dtype for dtype, _ in tensors.values()} - supported_types())
    if unsupported:
        raise ModelFileError(path, f"holds tensors of GGUF type(s) {', '.join(unsupported)}, which cannot be read "
                                   f"here (supported: Q8_0, Q5_0/1, Q4_0/1, Q2_K-Q6_K, IQ4_NL, IQ4_XS, F16, BF16, F32)")
    return TensorFileInfo([path], tensors, scalar_fields(reader), {k: path for k in tensors}, offsets,
                          format="gguf", handle=reader)


def scalar_fields(reader) -> dict[str, str]:
    """The header's single-valued fields as text (arrays such as the tokenizer vocabulary are left out)."""
    out = {}
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or len(f.data) != 1 or len(f.types) != 1:
            continue
        try:
            value = f.contents()
        except Exception:  # a field the reader cannot decode says nothing we need
            continue
        if isinstance(value, (str, int, float, bool)):
            out[name] = str(value)
    return out


def _orig_shape(reader, name: str) -> tuple | None:
    field = reader.get_field(_ORIG_SHAPE + name)
    if field is None:
        return None
    return tuple(int(field.parts[i][0]) for i in field.data)


def load_gguf_tensors(info, names: list[str]) -> dict:
    """Tensors by name, memory-mapped: F32/F16/BF16 as torch tensors of their logical shape, quantized ones as
    diffusers' GGUFParameter holding the raw blocks [rows, bytes per row]."""
    import torch
    from diffusers.quantizers.gguf.utils import GGUFParameter

    reader = info.handle
    by_name = {t.name: t for t in reader.tensors}
    out = {}
    with warnings.catch_warnings():  # the mapping is read-only on purpose: nothing writes to weights
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name in names:
            t = by_name[name]
            dtype, shape = info.tensors[name]
            raw = torch.from_numpy(t.data)
            if dtype == "BF16":
                out[name] = raw.view(torch.bfloat16).reshape(shape)
            elif dtype in FLOAT_TYPES:
                out[name] = raw.reshape(shape)
            else:
                if raw.shape[0] != shape[0] and len(shape) > 1:
                    raise ModelFileError(info.name, f"tensor {name} was reshaped for quantization "
                                                    f"({list(raw.shape)} for {list(shape)}): not readable as a layer")
                out[name] = GGUFParameter(raw.reshape(shape[0] if len(shape) > 1 else 1, -1),
                                          quant_type=t.tensor_type)
    return out


def quant_summary(info) -> str:
    """A short name for a GGUF file's quantization: llama.cpp's file type (Q4_K_M, ...) when the header names
    it, else the type holding most of the weights' bytes (Q8_0, ...)."""
    import gguf

    file_type = info.metadata.get("general.file_type")
    if file_type is not None:
        try:
            name = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
            if name not in ("F16", "BF16", "ALL_F32"):
                return name
        except ValueError:
            pass
    weight: dict[str, int] = {}
    for name, (dtype, _) in info.tensors.items():
        weight[dtype] = weight.get(dtype, 0) + info.offsets[name][1]
    return max(weight, key=weight.get) if weight else "empty"
