"""The optimizer: AdamW over the LoRA factors, 8-bit (bitsandbytes) where it exists and the GPU is CUDA.

Settings as diffusers' LoRA examples use them: betas (0.9, 0.999), weight decay 1e-4, eps 1e-8, constant lr.
"""

from __future__ import annotations

from engine.errors import SettingsError

BETAS, WEIGHT_DECAY, EPS = (0.9, 0.999), 1e-4, 1e-8


def has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # not installed, or installed without a usable CUDA library
        return False
    return True


def choose(kind: str, device) -> str:
    """"adamw8bit" or "adamw" for the user's choice (auto, adamw, adamw8bit) on `device`."""
    cuda = getattr(device, "type", str(device)) == "cuda"
    if kind == "adamw8bit":
        if not cuda:
            raise SettingsError("8-bit AdamW runs on CUDA GPUs only: use --optimizer adamw (or auto)")
        if not has_bitsandbytes():
            raise SettingsError("8-bit AdamW needs the bitsandbytes package: pip install bitsandbytes "
                                "(or use --optimizer adamw)")
        return kind
    if kind == "auto":
        return "adamw8bit" if cuda and has_bitsandbytes() else "adamw"
    return "adamw"


def make_optimizer(params, lr: float, kind: str):
    """A torch optimizer of `kind` ("adamw" or "adamw8bit", from choose())."""
    if kind == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY, eps=EPS)
    import torch

    return torch.optim.AdamW(params, lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY, eps=EPS)
