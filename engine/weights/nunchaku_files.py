"""Nunchaku SVDQuant files (`svdq-int4_r256-*.safetensors`, `svdq-fp4_r128-*`): what they are and what running
them needs. They hold 4-bit weights with a low-rank correction (`qweight`, `wscales`, `smooth_factor`,
`proj_down`, `proj_up`; fp4 adds `wcscales`, `wtscale`) on fused `to_qkv` layers, plus the model config and the
quantization config (`{"weight": {"dtype": "int4" | "fp4_e2m1_all"}, "rank": ...}`) in the header. Only the
`nunchaku` package's CUDA kernels run them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# GPU generations nunchaku's 4-bit kernels run on (compute capability): int4 on Turing, Ampere and Ada,
# fp4 on consumer Blackwell (its own check, nunchaku.utils.check_hardware_compatibility)
INT4_CAPABILITIES = ((7, 5), (8, 0), (8, 6), (8, 7), (8, 9))
FP4_CAPABILITIES = ((12, 0), (12, 1))


@dataclass(frozen=True)
class SVDQFile:
    precision: str  # "int4" | "fp4"
    rank: int | None


def svdq_file(info) -> SVDQFile:
    """Precision and rank from the header's quantization config, else from the keys and the file name."""
    try:
        qconf = json.loads(info.metadata.get("quantization_config") or "{}")
    except ValueError:
        qconf = {}
    dtype = str((qconf.get("weight") or {}).get("dtype", "")) if isinstance(qconf, dict) else ""
    name = info.paths[0].name.lower()
    if dtype:
        precision = "fp4" if "fp4" in dtype else "int4"
    elif any(k.endswith(".wtscale") or k.endswith(".wcscales") for k in info.tensors) or "fp4" in name:
        precision = "fp4"
    else:
        precision = "int4"
    rank = qconf.get("rank") if isinstance(qconf, dict) else None
    if rank is None:
        m = re.search(r"_r(\d+)", name)
        rank = int(m.group(1)) if m else None
    return SVDQFile(precision, rank)


def svdq_variant(info) -> str:
    f = svdq_file(info)
    return f"{f.precision}" + (f" r{f.rank}" if f.rank else "")


def gpu_problem(precision: str, capability: tuple[int, int] | None) -> str | None:
    """Why a GPU of `capability` (None: no CUDA GPU) cannot run an SVDQ file of `precision`, or None."""
    if capability is None:
        which = ("an RTX 50xx (Blackwell)" if precision == "fp4"
                 else "a Turing, Ampere or Ada (RTX 20xx-40xx)")
        return f"an NVIDIA GPU, {which} for {precision} files; none is in use"
    allowed = FP4_CAPABILITIES if precision == "fp4" else INT4_CAPABILITIES
    if tuple(capability) in allowed:
        return None
    cap = f"{capability[0]}.{capability[1]}"
    if precision == "fp4":
        return f"an RTX 50xx (Blackwell, compute capability 12.0) GPU for fp4 files; this GPU is {cap} (use the int4 file)"
    if tuple(capability) in FP4_CAPABILITIES:
        return "the fp4 file on an RTX 50xx GPU (int4 files do not run on Blackwell)"
    return (f"a Turing, Ampere or Ada GPU (RTX 20xx-40xx, compute capability 7.5-8.9) for int4 files; this GPU "
            f"is {cap}")
