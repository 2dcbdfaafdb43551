"""Tiny random image-to-LoRA models in the released file layouts, and pictures, for tests and benchmarks.

The encoders are transformers' own classes at a toy width, saved with the release's names (DINOv3's blocks as
`layer.N.*`); the hypernetwork's tensors are written name by name in the Z-Image-i2L layout, sized for the tiny
Z-Image transformer of models/z_image/tiny.py (width 64, feed-forward 170, 2 layers, 1 refiner of each kind).
Head widths are the release's (96 for SigLIP2, 128 for DINOv3), so the configs are read as the real ones are.
Two folder layouts: DiffSynth-Studio's (`DiffSynth-Studio/<repo>/<path>`) and the ComfyUI node's (`I2L/...`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.z_image.i2l.files import PARTS
from models.z_image.i2l.hypernet import ATTENTION, FEED_FORWARD
from models.z_image.i2l.identify import DINOV3, HYPERNETWORK, SIGLIP2

TINY_BLOCKS = (("layers_lora", 2), ("context_refiner_lora", 1), ("noise_refiner_lora", 1))


def _randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else max(1, p.shape[0])
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / fan_in ** 0.5) + ("norm" in name and p.dim() == 1))


def siglip(seed: int = 0, hidden: int = 192, layers: int = 2, intermediate: int = 768, image: int = 384,
           patch: int = 16):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                                num_attention_heads=hidden // 96, image_size=image, patch_size=patch,
                                hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    model = SiglipVisionModel(config)
    _randomize(model, seed)
    return model.eval()


def dinov3(seed: int = 1, hidden: int = 256, layers: int = 2, intermediate: int = 512, registers: int = 4,
           patch: int = 16):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                             num_attention_heads=hidden // 128, patch_size=patch, num_register_tokens=registers,
                             use_gated_mlp=True, hidden_act="silu", mlp_bias=True, query_bias=False, key_bias=False,
                             value_bias=False, proj_bias=True, layer_norm_eps=1e-5, rope_theta=100.0)
    model = DINOv3ViTModel(config)
    _randomize(model, seed)
    return model.eval()


def released_names(role: str, state_dict: dict) -> dict:
    """A transformers state dict under the release's names (DINOv3-7B's file: `layer.N.*`)."""
    if role == DINOV3:
        return {(k[len("model."):] if k.startswith("model.layer.") else k): v for k, v in state_dict.items()}
    return dict(state_dict)


def hypernetwork_tensors(embedding: int, dim: int = 64, ffn: int = 170, blocks=TINY_BLOCKS, compress: int = 16,
                         rank: int = 4, seed: int = 2, scale: float = 0.025) -> dict:
    """Random weights named as Z-Image-i2L's file names them (bias-free proj_a / proj_b, proj_in / proj_out)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {"attention.to_q": (dim, dim), "attention.to_k": (dim, dim), "attention.to_v": (dim, dim),
             "attention.to_out.0": (dim, dim), "feed_forward.w1": (dim, ffn), "feed_forward.w2": (ffn, dim),
             "feed_forward.w3": (dim, ffn)}
    out = {}
    for component, count in blocks:
        groups = [ATTENTION] * count + [FEED_FORWARD] * count
        for j, targets in enumerate(groups):
            for k, target in enumerate(targets):
                inp, outp = sizes[target]
                for proj, width in (("proj_a", inp * rank), ("proj_b", outp * rank)):
                    stem = f"{component}.blocks.{j}.layers.{k}.{proj}"
                    out[f"{stem}.proj_in.weight"] = torch.randn(compress, embedding, generator=gen) / embedding ** 0.5
                    out[f"{stem}.proj_out.weight"] = torch.randn(width, compress, generator=gen) * scale
    return out


def write_files(folder, layout: str = "diffsynth", dtype: torch.dtype | None = None, siglip_model=None,
                dinov3_model=None, hyper: dict | None = None) -> dict[str, Path]:
    """The three files under `folder` in `layout` ("diffsynth" or "comfyui"); returns {role: path}."""
    from safetensors.torch import save_file

    from engine.weights.assign import state_dict_for_file

    s = siglip_model if siglip_model is not None else siglip()
    d = dinov3_model if dinov3_model is not None else dinov3()
    hyper = hyper if hyper is not None else hypernetwork_tensors(s.config.hidden_size + d.config.hidden_size)
    tensors = {SIGLIP2: released_names(SIGLIP2, state_dict_for_file(s)),
               DINOV3: released_names(DINOV3, state_dict_for_file(d)), HYPERNETWORK: hyper}
    paths = {}
    for role, sd in tensors.items():
        part = PARTS[role]
        rel = f"{part.repo}/{part.path}" if layout == "diffsynth" else part.comfyui
        path = Path(folder) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in sd.items()}, str(path))
        paths[role] = path
    return paths


def write_picture(path, size=(320, 240), seed=0, mode="RGB"):
    """A picture with structure (gradients plus noise), so crops and encoders see different content."""
    import numpy as np
    from PIL import Image

    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    arr = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path
