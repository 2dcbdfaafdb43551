"""Shared by the image-to-LoRA tests: tiny files in the released layouts, pictures, and the math computed here
from the raw tensors (not with the app's modules), to compare the app's LoRA against."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.z_image.i2l.tiny import write_picture  # noqa: F401  (the tests' pictures)

TINY_TARGETS = {"attention.to_q": (64, 64), "attention.to_k": (64, 64), "attention.to_v": (64, 64),
                "attention.to_out.0": (64, 64), "feed_forward.w1": (64, 170), "feed_forward.w2": (170, 64),
                "feed_forward.w3": (64, 170)}  # target -> (in, out) for the tiny transformer
COMPONENTS = {"layers_lora": ("layers", 2), "context_refiner_lora": ("context_refiner", 1),
              "noise_refiner_lora": ("noise_refiner", 1)}
ATTN, FFN = list(TINY_TARGETS)[:4], list(TINY_TARGETS)[4:]


def reference_crop(path, side=1024) -> torch.Tensor:
    """DiffSynth's ImageCropAndResize(1024, 1024) on a PIL picture, restated: scale so it covers the square
    (bilinear), take the centre (torchvision rounds the offsets with round()) -> uint8 [3, side, side]."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = max(side / w, side / h)
    img = img.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = img.size
    left, top = int(round((w - side) / 2.0)), int(round((h - side) / 2.0))
    return torch.from_numpy(np.array(img.crop((left, top, left + side, top + side)))).permute(2, 0, 1)


def reference_vector(paths, siglip, dinov3) -> torch.Tensor:
    """[N, E]: SigLIP's pooled output and DINOv3's CLS after the final norm, each on its own processor's input
    (transformers' processors as DiffSynth configures them), from the in-memory transformers models."""
    crops = torch.stack([reference_crop(p) for p in paths])
    side = siglip.config.image_size
    s_in = F.interpolate(crops, size=(side, side), mode="bilinear", antialias=True).float()
    s_in = (s_in / 255 - 0.5) / 0.5
    d_in = F.interpolate(crops.float() / 255, size=(224, 224), mode="bilinear", antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    d_in = (d_in - mean) / std
    with torch.no_grad():
        a = siglip(pixel_values=s_in).pooler_output
        b = dinov3(pixel_values=d_in).last_hidden_state[:, 0]
    return torch.cat([a, b], dim=-1)


def reference_lora(hyper: dict, x: torch.Tensor, rank: int = 4) -> dict:
    """The hypernetwork's math on the raw tensors, then DiffSynth's merge: {module: (A [rN, in], B [out, rN])}."""
    out = {}
    for comp, (prefix, count) in COMPONENTS.items():
        for j in range(2 * count):
            targets = ATTN if j < count else FFN
            for k, target in enumerate(targets):
                inp, outp = TINY_TARGETS[target]
                stem = f"{comp}.blocks.{j}.layers.{k}"
                As, Bs = [], []
                for v in x:
                    a = hyper[f"{stem}.proj_a.proj_out.weight"] @ (hyper[f"{stem}.proj_a.proj_in.weight"] @ v)
                    b = hyper[f"{stem}.proj_b.proj_out.weight"] @ (hyper[f"{stem}.proj_b.proj_in.weight"] @ v)
                    As.append(a.reshape(rank, inp))
                    Bs.append(b.reshape(outp, rank))
                out[f"{prefix}.{j % count}.{target}"] = (torch.cat(As, 0) / len(x), torch.cat(Bs, 1))
    return out
