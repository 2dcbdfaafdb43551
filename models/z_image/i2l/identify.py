"""What a weight file is, from its tensor names alone: so a file in the wrong slot is named, not half-loaded.

The released layouts (checked against the key hashes in DiffSynth-Studio's model registry):
  SigLIP2-G384   transformers' SiglipVisionModel names, no prefix: embeddings.patch_embedding.weight, head.probe
                 (files saved by older transformers put `vision_model.` in front)
  DINOv3-7B      DINOv3ViTModel names with the block list saved as `layer.N.*` (transformers: `model.layer.N.*`)
  Z-Image-i2L    layers_lora / context_refiner_lora / noise_refiner_lora . blocks.N.layers.K.proj_{a,b}.proj_{in,out}
  Qwen-Image-i2L blocks.N.layers.K.proj_a... at the top (no component prefix), for Qwen-Image's 60 blocks
"""

from __future__ import annotations

SIGLIP2, DINOV3, HYPERNETWORK = "siglip2", "dinov3", "hypernetwork"
ROLES = (SIGLIP2, DINOV3, HYPERNETWORK)
NAMES = {
    SIGLIP2: "the SigLIP2-G384 image encoder",
    DINOV3: "the DINOv3-7B image encoder",
    HYPERNETWORK: "the Z-Image-i2L hypernetwork",
    "qwen_i2l": "Qwen-Image-i2L's hypernetwork (it makes LoRAs for Qwen-Image, not Z-Image)",
    "i2l_compressed": "a compressed image-to-LoRA variant (module_dict.*) that has no released Z-Image weights",
    "z_image": "a Z-Image model, not an image-to-LoRA file",
    "lora": "a LoRA, not an image-to-LoRA model",
}
COMPONENTS = ("layers_lora", "context_refiner_lora", "noise_refiner_lora")


def strip_prefix(key: str) -> str:
    return key[len("vision_model."):] if key.startswith("vision_model.") else key


def identify(keys) -> str | None:
    """siglip2 | dinov3 | hypernetwork | qwen_i2l | i2l_compressed | z_image | lora, or None (unknown)."""
    names = {strip_prefix(k) for k in keys}
    if "head.probe" in names and "embeddings.patch_embedding.weight" in names:
        return SIGLIP2
    if "embeddings.register_tokens" in names and "embeddings.patch_embeddings.weight" in names:
        return DINOV3
    if any(k.startswith(f"{c}.blocks.") and ".proj_a.proj_in." in k for c in COMPONENTS for k in names):
        return HYPERNETWORK
    if any(k.startswith("blocks.") and ".proj_a.proj_in." in k for k in names):
        return "qwen_i2l"
    if any(k.startswith("module_dict.") for k in names):
        return "i2l_compressed"
    if any(k.endswith((".lora_A.weight", ".lora_down.weight", ".lora_B.weight", ".lora_up.weight")) for k in names):
        return "lora"
    if any(".attention.to_q." in k or ".attention.qkv." in k for k in names):
        return "z_image"
    return None


def describe(kind: str | None) -> str:
    return NAMES.get(kind, "not a file this feature knows (no image-encoder or hypernetwork tensors)")
