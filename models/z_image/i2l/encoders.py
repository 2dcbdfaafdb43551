"""The two image encoders as transformers' own classes (SiglipVisionModel, DINOv3ViTModel), their configs read
from the released files' shapes, and the preprocessing DiffSynth-Studio gives each.

The released files carry no config. What their shapes cannot tell is fixed by the release: SigLIP2-G384 has
96-wide attention heads (1536 / 16), GELU-tanh and LayerNorm eps 1e-6; DINOv3-7B has 128-wide heads (4096 / 32),
a SiLU-gated MLP, eps 1e-5 and RoPE theta 100. Everything else (width, depth, MLP size, patch, image size,
register tokens, biases) comes from the file, so smaller files of the same layout load too.

Outputs (DiffSynth's `Siglip2ImageEncoder` and `DINOv3ImageEncoder`): SigLIP's pooled output (the attention-
pooling head after the post-layernorm) [N, 1536], DINOv3's CLS token after the final norm [N, 4096].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.errors import ModelFileError
from models.z_image.i2l.identify import SIGLIP2, strip_prefix

SIGLIP_HEAD_DIM, DINOV3_HEAD_DIM = 96, 128
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
DINOV3_MEAN, DINOV3_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DINOV3_SIZE = 224  # DiffSynth's DINOv3 processor size (RoPE: the weights do not fix it)


def file_to_model_names(role: str, keys) -> dict[str, str]:
    """File name -> the transformers model's parameter name."""
    if role == SIGLIP2:
        return {k: strip_prefix(k) for k in keys}
    return {k: ("model." + k if k.startswith("layer.") else k) for k in keys}


def _count(shapes: dict, prefix: str) -> int:
    found = {int(k[len(prefix):].split(".")[0]) for k in shapes if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def _heads(path, hidden: int, head_dim: int, what: str) -> int:
    if hidden % head_dim:
        raise ModelFileError(path, f"{what} width {hidden} is not a multiple of its {head_dim}-wide attention heads "
                                   "(the released layout): not the released file or a model of its family")
    return hidden // head_dim


def siglip_config(path, shapes: dict):
    """SiglipVisionConfig from the file's shapes (model names)."""
    from transformers import SiglipVisionConfig

    try:
        hidden, channels, patch, _ = shapes["embeddings.patch_embedding.weight"]
        positions = shapes["embeddings.position_embedding.weight"][0]
        intermediate = shapes["encoder.layers.0.mlp.fc1.weight"][0]
    except KeyError as exc:
        raise ModelFileError(path, f"not a SigLIP2 vision encoder: {exc.args[0]} is missing") from None
    side = round(positions ** 0.5)
    if side * side != positions:
        raise ModelFileError(path, f"{positions} position embeddings do not form a square grid")
    return SiglipVisionConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=_count(shapes, "encoder.layers."),
        num_attention_heads=_heads(path, hidden, SIGLIP_HEAD_DIM, "SigLIP2"), num_channels=channels,
        image_size=side * patch, patch_size=patch, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
        attention_dropout=0.0, vision_use_head=True)


def dinov3_config(path, shapes: dict):
    """DINOv3ViTConfig from the file's shapes (model names)."""
    from transformers import DINOv3ViTConfig

    try:
        hidden, channels, patch, _ = shapes["embeddings.patch_embeddings.weight"]
        registers = shapes["embeddings.register_tokens"][1]
    except KeyError as exc:
        raise ModelFileError(path, f"not a DINOv3 encoder: {exc.args[0]} is missing") from None
    layer = "model.layer.0."
    gated = layer + "mlp.gate_proj.weight" in shapes
    up = shapes.get(layer + "mlp.up_proj.weight")
    if up is None:
        raise ModelFileError(path, "not a DINOv3 encoder: layer.0.mlp.up_proj.weight is missing")
    return DINOv3ViTConfig(
        hidden_size=hidden, intermediate_size=up[0], num_hidden_layers=_count(shapes, "model.layer."),
        num_attention_heads=_heads(path, hidden, DINOV3_HEAD_DIM, "DINOv3"), num_channels=channels,
        patch_size=patch, image_size=DINOV3_SIZE, num_register_tokens=registers, use_gated_mlp=gated,
        hidden_act="silu" if gated else "gelu", mlp_bias=layer + "mlp.up_proj.bias" in shapes,
        query_bias=layer + "attention.q_proj.bias" in shapes, key_bias=layer + "attention.k_proj.bias" in shapes,
        value_bias=layer + "attention.v_proj.bias" in shapes, proj_bias=layer + "attention.o_proj.bias" in shapes,
        layer_norm_eps=1e-5, layerscale_value=1.0, rope_theta=100.0, pos_embed_rescale=2.0, drop_path_rate=0.0)


def config_for(role: str, path, shapes: dict):
    return siglip_config(path, shapes) if role == SIGLIP2 else dinov3_config(path, shapes)


def factory(role: str, config):
    """The empty-model factory for engine.weights.assign.build_empty."""
    from transformers import DINOv3ViTModel, SiglipVisionModel

    cls = SiglipVisionModel if role == SIGLIP2 else DINOv3ViTModel

    def make():
        model = cls(config)
        model.set_attn_implementation("sdpa")
        if role == SIGLIP2 and config.vision_use_head:
            sequence_first(model.head.attention)
        return model

    return make


def sequence_first(attention: torch.nn.MultiheadAttention) -> None:
    """Run SigLIP's pooling attention sequence-first on contiguous inputs (hooks; the same math, bit for bit).

    With batch_first, nn.MultiheadAttention transposes key and value inside; on the CPU, a bf16 linear of that
    transposed view (weights not requiring grad) goes through a batched matmul that copies the key/value
    projection weight once per token: 1.3 GB for a 768-wide toy, about 5 GB at SigLIP2-G384's size (torch 2.x)."""
    attention.batch_first = False

    def before(module, args, kwargs):
        names = ("query", "key", "value")
        args = tuple(a.transpose(0, 1).contiguous() if i < 3 else a for i, a in enumerate(args))
        kwargs = {k: (v.transpose(0, 1).contiguous() if k in names else v) for k, v in kwargs.items()}
        return args, kwargs

    def after(module, args, kwargs, output):
        return (output[0].transpose(0, 1), *output[1:])

    attention.register_forward_pre_hook(before, with_kwargs=True)
    attention.register_forward_hook(after, with_kwargs=True)


def blocks(role: str, model) -> list:
    """The repeated layers (streamed one at a time on small GPUs; progress is reported per layer)."""
    return list(model.encoder.layers if role == SIGLIP2 else model.model.layer)


def width(role: str, config) -> int:
    return config.hidden_size


# ---- pictures -> pixel values --------------------------------------------------------------------

def _resize(pixels: torch.Tensor, side: int) -> torch.Tensor:
    """Bilinear with antialiasing, as torchvision resizes tensors for transformers' processors."""
    return F.interpolate(pixels, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def siglip_pixels(crops: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 crops [N, 3, H, W] -> [N, 3, side, side] float32, as transformers' SiglipImageProcessor with
    DiffSynth's settings (bilinear, rescale 1/255, mean = std = 0.5): resized as uint8, rescale and normalize
    fused into one step."""
    resized = _resize(crops, side).float()
    mean = torch.tensor(SIGLIP_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(SIGLIP_STD).view(1, 3, 1, 1) * 255
    return (resized - mean) / std


def dinov3_pixels(crops: torch.Tensor, side: int = DINOV3_SIZE) -> torch.Tensor:
    """uint8 crops [N, 3, H, W] -> [N, 3, side, side] float32, as transformers' DINOv3ViTImageProcessor with
    DiffSynth's settings: rescaled to 0-1 first, then resized (bilinear), then ImageNet mean/std."""
    resized = _resize(crops.float() * (1 / 255), side)
    mean, std = torch.tensor(DINOV3_MEAN).view(1, 3, 1, 1), torch.tensor(DINOV3_STD).view(1, 3, 1, 1)
    return (resized - mean) / std


def pixels_for(role: str, config, crops: torch.Tensor) -> torch.Tensor:
    return siglip_pixels(crops, config.image_size) if role == SIGLIP2 else dinov3_pixels(crops)


@torch.no_grad()
def encode(model, pixels: torch.Tensor) -> torch.Tensor:
    """Pixel values [N, 3, S, S] (on the model's device, in its compute dtype) -> one vector per picture
    [N, width]: SigLIP's pooled output, DINOv3's CLS token after the final norm."""
    return model(pixel_values=pixels).pooler_output
