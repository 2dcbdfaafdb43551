"""Tiny ESRGAN-architecture (RRDBNet) upscalers written the way the real files are laid out, for tests and
benchmarks: the original ESRGAN / 4x-UltraSharp key names (`model.N...`, `model.1.sub.N.RDBk.convj.0`) and
Real-ESRGAN's (basicsr's RRDBNet: `conv_first`, `body.N.rdbk.convj`, `conv_up1`, `conv_hr`, `conv_last`)."""

from __future__ import annotations

from pathlib import Path

import torch


def _conv(sd, name, cin, cout, gen, k=3):
    sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * (0.5 / (cin * k * k) ** 0.5)
    sd[f"{name}.bias"] = torch.randn(cout, generator=gen) * 0.01


def _rrdb(sd, prefix, nf, gc, gen, rdb="rdb{}", conv="conv{}", tail=""):
    for r in range(1, 4):
        for c in range(1, 6):
            cin = nf + (c - 1) * gc
            _conv(sd, f"{prefix}.{rdb.format(r)}.{conv.format(c)}{tail}", cin, gc if c < 5 else nf, gen)


def realesrgan_x4(nf: int = 8, gc: int = 32, blocks: int = 1, seed: int = 0) -> dict:
    """basicsr RRDBNet, scale 4 (RealESRGAN_x4plus's names)."""
    gen, sd = torch.Generator().manual_seed(seed), {}
    _conv(sd, "conv_first", 3, nf, gen)
    for b in range(blocks):
        _rrdb(sd, f"body.{b}", nf, gc, gen)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        _conv(sd, name, nf, nf, gen)
    _conv(sd, "conv_last", nf, 3, gen)
    return sd


def esrgan_old_x4(nf: int = 8, gc: int = 32, blocks: int = 1, seed: int = 1) -> dict:
    """The original ESRGAN sequential names (4x-UltraSharp and most community models). Growth channels `gc` are
    32 in every real ESRGAN file (the architecture fixes them; only nf and the block count vary)."""
    gen, sd = torch.Generator().manual_seed(seed), {}
    _conv(sd, "model.0", 3, nf, gen)
    for b in range(blocks):
        _rrdb(sd, f"model.1.sub.{b}", nf, gc, gen, rdb="RDB{}", conv="conv{}", tail=".0")
    _conv(sd, f"model.1.sub.{blocks}", nf, nf, gen)
    for index in (3, 6, 8):  # upconv 1 and 2, HR conv (Upsample and LeakyReLU in between hold no weights)
        _conv(sd, f"model.{index}", nf, nf, gen)
    _conv(sd, "model.10", nf, 3, gen)
    return sd


def write(folder, name: str, state: dict) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
