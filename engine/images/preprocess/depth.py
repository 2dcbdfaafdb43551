"""Depth maps with Depth Anything V2 (transformers): near is white, far is black, as in depth control maps."""

from __future__ import annotations

import numpy as np

from engine.images.preprocess.hub import HubModel, fetch, load

MODELS = {
    "small": HubModel("depth-anything/Depth-Anything-V2-Small-hf", 99_200_000),
    "large": HubModel("depth-anything/Depth-Anything-V2-Large-hf", 1_340_000_000),
}


def depth_map(image, size: str, locator, device):
    """PIL RGB image -> RGB depth map of the same size (relative depth stretched to 0..255)."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    folder = fetch(MODELS[size], locator)
    model, processor = load("DepthAnythingForDepthEstimation", "DPTImageProcessorPil", folder, str(device))
    pixels = processor(images=image, return_tensors="pt").pixel_values
    with torch.no_grad():
        depth = model(pixel_values=pixels.to(model.device, model.dtype)).predicted_depth  # [1, h, w]
    depth = F.interpolate(depth[:, None].float(), size=(image.height, image.width), mode="bicubic",
                          align_corners=False)[0, 0].cpu().numpy()
    lo, hi = float(depth.min()), float(depth.max())
    scaled = (depth - lo) / (hi - lo) if hi > lo else np.zeros_like(depth)
    return Image.fromarray((scaled * 255).round().astype(np.uint8), "L").convert("RGB")
