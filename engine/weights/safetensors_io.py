"""Reading safetensors files safely: header checks before any tensor is touched, then zero-copy mmap.

Only safetensors are read. Pickle-based checkpoints (.ckpt/.pt/.pth/.bin) can run code when loaded,
so they are refused by name, never opened.
"""

from __future__ import annotations

import os
import struct
from functools import lru_cache
from pathlib import Path

from engine.errors import ModelFileError
from engine.weights.file_info import TensorFileInfo

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
MAX_HEADER = 16 * 2**20  # real headers are KBs (a LoRA's training metadata a few MB); parsing costs ~7x the bytes
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E8M0": 1, "F4": 1}


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelFileError(path, f"'{path.suffix}' files are pickle checkpoints, which can run code when "
                                   "opened; this app reads .safetensors only. Use the model's .safetensors file.")


def read_header(path: str | os.PathLike) -> TensorFileInfo:
    """Parse and validate one file's header; raise ModelFileError naming what is wrong."""
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise ModelFileError(path, "file not found")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelFileError(path, f"not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n + 8 > size:
            raise ModelFileError(path, "not a safetensors file, or its header is cut off (truncated download?)")
        if n > MAX_HEADER:  # refused before reading it: a huge header is no model's
            raise ModelFileError(path, f"its safetensors header claims {n / 2**20:.0f} MiB; this app reads headers "
                                       f"up to {MAX_HEADER >> 20} MiB (model files have a few KB): damaged or not "
                                       "a model file")
        raw = fh.read(n)
    from engine.errors import SettingsError
    from engine.jsontext import parse_json_object

    try:
        header = parse_json_object(raw, "header")
    except SettingsError as exc:
        raise ModelFileError(path, f"corrupt safetensors header ({exc}): the file is damaged or not a "
                                   "safetensors file") from None
    metadata = _check_metadata(path, header.pop("__metadata__", None))
    tensors, offsets, end = _check_entries(path, header)
    if 8 + n + end != size:
        got, want = size, 8 + n + end
        what = "truncated (incomplete download?)" if got < want else "longer than its header says (corrupt?)"
        raise ModelFileError(path, f"{what}: the header needs {want:,} bytes, the file has {got:,}")
    offsets = {k: (8 + n + start, stop - start) for k, (start, stop) in offsets.items()}
    return TensorFileInfo([path], tensors, dict(metadata), {k: path for k in tensors}, offsets)


def _check_metadata(path: Path, metadata) -> dict:
    """`__metadata__` maps text to text (the safetensors format; its own reader refuses anything else)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFileError(path, "corrupt safetensors header (__metadata__ must map text to text)")
    return metadata


def _count(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _check_entries(path: Path, header: dict) -> tuple[dict, dict, int]:
    tensors, offsets, end = {}, {}, 0
    for key, entry in header.items():
        try:
            dtype, shape, (start, stop) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            if not (isinstance(dtype, str) and all(map(_count, shape)) and _count(start) and _count(stop)):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(path, f"corrupt safetensors header (entry '{key}' is malformed)") from None
        count = 1
        for s in shape:
            count *= s
        if stop < start or (dtype in _DTYPE_SIZES and dtype != "F4" and stop - start != count * _DTYPE_SIZES[dtype]):
            raise ModelFileError(path, f"corrupt safetensors header (tensor '{key}' has wrong offsets)")
        tensors[key] = (dtype, shape)
        offsets[key] = (start, stop)
        end = max(end, stop)
    return tensors, offsets, end


def read_headers(paths: list[Path]) -> TensorFileInfo:
    """One combined view over the shards of a model (a diffusers folder)."""
    infos = [read_header(p) for p in paths]
    if len(infos) == 1:
        return infos[0]
    merged = TensorFileInfo([p for i in infos for p in i.paths], {}, {})
    for info in infos:
        merged.tensors.update(info.tensors)
        merged.sources.update(info.sources)
        merged.offsets.update(info.offsets)
        merged.metadata.update(info.metadata)
    return merged


def open_weights(path) -> TensorFileInfo:
    """The header of a weight file, or of all shards in a folder: parsed once per file state (path, size and
    modification time), however many times a load asks (which file kind, which components, then the load)."""
    path = Path(path)
    refuse_pickle(path)
    if not path.exists():
        raise ModelFileError(path, "file or folder not found")
    stat = path.stat()
    return _open_weights(path.resolve(), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=32)
def _open_weights(path: Path, _mtime: int, _size: int) -> TensorFileInfo:
    if path.is_dir():
        return read_headers(weight_files_in(path))
    from engine.weights import gguf_io

    return gguf_io.read_gguf_header(path) if gguf_io.is_gguf(path) else read_header(path)


def weight_files_in(folder: Path) -> list[Path]:
    """The safetensors shards in a folder; refuses a folder holding only pickle weights."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise ModelFileError(folder, f"holds only pickle weights ({', '.join(pickles[:3])}); "
                                         "this app reads .safetensors only")
        raise ModelFileError(folder, "no .safetensors weights in this folder")
    return files


def load_tensors(info: TensorFileInfo, keys: list[str] | None = None, aligned=(), alignment: int = 64) -> dict:
    """Memory-mapped tensors (zero-copy: pages are read when first used, never held twice).

    Tensors named in `aligned` must start on an `alignment`-byte boundary (int8 matmul kernels crash on
    others). The mapping starts at the file's first byte, so one whose file offset is unaligned would be
    unaligned in memory: it is read from the file into fresh aligned memory instead, without mapping it
    (so its bytes are in memory once, not mapped and copied).
    """
    from safetensors import safe_open

    wanted = info.tensors.keys() if keys is None else keys
    if info.format == "gguf":
        from engine.weights import gguf_io

        return gguf_io.load_gguf_tensors(info, list(wanted))
    aligned = set(aligned)
    by_file: dict[Path, list[str]] = {}
    for key in wanted:
        by_file.setdefault(info.sources[key], []).append(key)
    out = {}
    for path, names in by_file.items():
        try:
            with safe_open(str(path), framework="pt") as f, open(path, "rb", buffering=0) as raw:
                for name in names:
                    offset, nbytes = info.offsets.get(name, (0, 0))
                    if name in aligned and offset % alignment:
                        out[name] = _read_aligned(raw, *info.tensors[name], offset, nbytes)
                    else:
                        out[name] = f.get_tensor(name)
        except ModelFileError:
            raise
        except Exception as exc:  # safetensors raises its own types for damaged files
            raise ModelFileError(path, f"cannot read tensors: {exc}") from None
    return out


_TORCH_DTYPES = {"I8": "int8", "U8": "uint8", "I16": "int16", "I32": "int32", "I64": "int64", "BF16": "bfloat16",
                 "F16": "float16", "F32": "float32", "F64": "float64", "BOOL": "bool"}


def _read_aligned(raw, dtype: str, shape: tuple, offset: int, nbytes: int):
    """A tensor read from the file into new memory (torch allocates 64-byte aligned blocks)."""
    import torch

    buffer = torch.empty(nbytes, dtype=torch.uint8)
    view, done = memoryview(buffer.numpy()), 0
    raw.seek(offset)
    while done < nbytes:  # one read returns at most about 2 GB
        got = raw.readinto(view[done:])
        if not got:
            raise ModelFileError(raw.name, "the file ended before a tensor's data (truncated?)")
        done += got
    return buffer.view(getattr(torch, _TORCH_DTYPES[dtype])).reshape(shape)
