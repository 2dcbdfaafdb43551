"""Every generation is checked for NaN/inf and for an all-black decode: the job fails with what went wrong and
what to change, instead of saving a black PNG (NaN pixels become 0 when an image is converted to 8 bits).

Likely causes, named in the message: float16 overflow (the model's activations pass 65504), a damaged weight file
(NaN or huge values stored in it), a LoRA at too high a strength.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import GenerationError  # noqa: F401 (re-exported for the pipelines)

if TYPE_CHECKING:
    import torch


def finite(x: "torch.Tensor") -> bool:
    import torch

    return bool(torch.isfinite(x).all())


def advice(dtype, loras: bool = False, what: str = "the transformer") -> str:
    """What to change, given the compute dtype and whether LoRAs were active."""
    import torch

    tips = []
    if dtype == torch.float16:
        tips.append("float16 overflow is the likely cause: use --dtype bfloat16 if the GPU has it (RTX 30xx and "
                    "newer), else --dtype float32")
    tips.append(f"a damaged weight file for {what} (NaN or huge values in it): download it again, or try its "
                "other file (bf16 / INT8 / fp8 / GGUF)")
    if loras:
        tips.append("a LoRA at too high a strength: lower it or remove it")
    return "; ".join(tips)


def guard_model_fn(model_fn, dtype, loras: bool = False, steps: int | None = None):
    """model_fn wrapped so that a NaN/inf prediction stops the sampler at once, naming the call."""
    calls = [0]

    def guarded(x, *args, **kwargs):
        out = model_fn(x, *args, **kwargs)
        calls[0] += 1
        if not finite(x):
            raise GenerationError(f"the latents hold NaN/inf values before model call {calls[0]}"
                                  f"{_of(steps)}: nothing was saved. Likely: {advice(dtype, loras)}")
        if not finite(out):
            raise GenerationError(f"the transformer returned NaN/inf values at model call {calls[0]}{_of(steps)}: "
                                  f"nothing was saved. Likely: {advice(dtype, loras)}")
        return out

    return guarded


def _of(steps) -> str:
    return f" (of about {steps} steps)" if steps else ""


def check_latents(latents: "torch.Tensor", dtype, loras: bool = False) -> None:
    if not finite(latents):
        raise GenerationError("the denoised latents hold NaN/inf values: nothing was saved. Likely: "
                              + advice(dtype, loras))


def check_pixels(pixels: "torch.Tensor", dtype) -> None:
    """pixels [B, 3, H, W] in [-1, 1] as the VAE decoded them (before clamping and 8-bit conversion)."""
    if not finite(pixels):
        raise GenerationError("the VAE decoded NaN/inf pixels from finite latents: nothing was saved. Likely: "
                              + advice(dtype, what="the VAE"))
    if float(pixels.float().amax()) <= -1.0 + 1.0 / 255:
        raise GenerationError("the VAE decoded an all-black image: nothing was saved. Likely: a damaged or "
                              "unsuitable VAE file (Z-Image needs the 16-channel Flux VAE, ae.safetensors)"
                              + ("; float16 overflow in the VAE: use --dtype bfloat16 or float32"
                                 if _is_fp16(dtype) else ""))


def _is_fp16(dtype) -> bool:
    import torch

    return dtype == torch.float16
