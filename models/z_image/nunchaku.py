"""Nunchaku SVDQ Z-Image transformers (`svdq-int4_r256-z-image-turbo.safetensors`, `svdq-fp4_r128-...`, which
Wan2GP ships): loaded through the nunchaku package's NunchakuZImageTransformer2DModel where it and a GPU its
kernels support are present; otherwise refused with what is needed. Not a dependency of this app.

Note: PyPI's `nunchaku` is an unrelated project; the real one is installed from nunchaku-ai's wheels, so the
check looks for the Z-Image class, not for the package name.
"""

from __future__ import annotations

import importlib

from engine.errors import ModelFileError
from engine.weights.nunchaku_files import gpu_problem, svdq_file

INSTALL = ("the nunchaku package with its CUDA kernels (a wheel matching your torch and CUDA from nunchaku-ai's "
           "releases, https://github.com/nunchaku-ai/nunchaku)")


def nunchaku_class():
    """NunchakuZImageTransformer2DModel, or None when the nunchaku package (with Z-Image support) is missing."""
    for module in ("nunchaku", "nunchaku.models.transformers.transformer_zimage"):
        try:
            cls = getattr(importlib.import_module(module), "NunchakuZImageTransformer2DModel", None)
        except Exception:  # missing, or a broken install whose import fails
            cls = None
        if cls is not None:
            return cls
    return None


def device_capability(device) -> tuple[int, int] | None:
    import torch

    if device is None or getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(device))


def problems(precision: str, device) -> list[str]:
    """What is missing to run an SVDQ file of `precision` on `device` (empty: it can run)."""
    missing = []
    if nunchaku_class() is None:
        missing.append(INSTALL)
    gpu = gpu_problem(precision, device_capability(device))
    if gpu:
        missing.append(gpu)
    return missing


def load_transformer(path, info, dtype, device):
    """The Nunchaku transformer, placed on `device` by nunchaku itself (it has no CPU path and no offloading)."""
    import torch

    svdq = svdq_file(info)
    what = f"a Nunchaku SVDQ {svdq.precision}" + (f" (rank {svdq.rank})" if svdq.rank else "") + " file"
    missing = problems(svdq.precision, device)
    if missing:
        raise ModelFileError(path, f"{what}: running it needs {' and '.join(missing)}. Without them use the bf16, "
                                   "INT8, fp8 or GGUF file of this model")
    if dtype not in (torch.bfloat16, torch.float16):
        raise ModelFileError(path, f"{what} computes in bfloat16 or float16, not {str(dtype).replace('torch.', '')}: "
                                   "use --dtype bfloat16 (or float16 on RTX 20xx)")
    model = nunchaku_class().from_pretrained(str(path), torch_dtype=dtype, device=str(device))
    model.weight_kind = "nunchaku"
    model.is_nunchaku = True
    return model
