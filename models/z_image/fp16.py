"""Z-Image in float16 (GPUs without bf16: GTX 16xx, RTX 20xx) without overflowing into NaN and black images.

Where it overflows: inside each block's feed-forward (silu(w1 x) * w3 x, then w2 of it can pass fp16's 65504) and
in the attention output projection; both results go straight into an RMSNorm (ffn_norm2, attention_norm2), which
does not care about their scale. So, as musubi-tuner and ComfyUI do, the branch is computed DOWNSCALE times
smaller: the inputs of `feed_forward.w3` and `attention.to_out.0` (bias-free Linears) are divided by DOWNSCALE, and
the following norm's eps by DOWNSCALE^2, which leaves the norm's output exactly as it was
(y/s / sqrt(mean(y^2)/s^2 + eps/s^2) = y / sqrt(mean(y^2) + eps)). What is still out of range after that is
clamped at the points ComfyUI clamps (clamp_fp16: the gated product, the attention and feed-forward outputs),
so a value saturates instead of becoming inf and then NaN.
"""

from __future__ import annotations

import torch

FP16_MAX = 65504.0
DOWNSCALE = 32.0  # a power of two: dividing is exact


def clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    """inf -> +-65504, NaN -> 0, for float16 tensors only."""
    if x.dtype == torch.float16:
        return torch.nan_to_num(x, nan=0.0, posinf=FP16_MAX, neginf=-FP16_MAX)
    return x


def _guarded_blocks(model: torch.nn.Module):
    """Blocks with Z-Image's layout: an attention and a feed-forward, each followed by an RMSNorm."""
    for module in model.modules():
        ff, attn = getattr(module, "feed_forward", None), getattr(module, "attention", None)
        if (ff is not None and attn is not None and hasattr(ff, "w3") and hasattr(ff, "w2")
                and hasattr(module, "ffn_norm2") and hasattr(module, "attention_norm2")
                and hasattr(attn, "to_out")):
            yield module


def _downscale(_module, args):
    x = args[0]
    return (x / DOWNSCALE, *args[1:]) if x.dtype == torch.float16 else None


def _clamp_input(_module, args):
    return (clamp_fp16(args[0]), *args[1:])


def _clamp_output(_module, _args, output):
    return clamp_fp16(output) if isinstance(output, torch.Tensor) else output


def install_fp16_guards(model: torch.nn.Module) -> int:
    """Add the downscaling and clamps to every Z-Image block of `model` (transformer or control module), once.
    Returns the number of blocks guarded."""
    count = 0
    for block in _guarded_blocks(model):
        if getattr(block, "_fp16_guarded", False):
            continue
        out_proj = block.attention.to_out[0]
        for linear in (block.feed_forward.w3, out_proj):
            if linear.bias is not None:  # the scale would not pass through a bias
                raise ValueError(f"{type(block).__name__}: {linear} has a bias; the fp16 downscale needs none")
            linear.register_forward_pre_hook(_downscale)
        block.feed_forward.w2.register_forward_pre_hook(_clamp_input)  # ComfyUI: clamp_fp16(silu(x1) * x3)
        block.feed_forward.register_forward_hook(_clamp_output)
        block.attention.register_forward_hook(_clamp_output)
        for norm in (block.ffn_norm2, block.attention_norm2):
            norm.eps = norm.eps / DOWNSCALE**2
        block._fp16_guarded = True
        count += 1
    return count
