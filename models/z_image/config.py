"""Model configs inferred from weight shapes; the real models' values fill in what shapes cannot tell."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from engine.errors import ModelFileError
from models.z_image.keys import count_blocks

ASSETS = Path(__file__).parent / "assets"
VAE_SCALE = 8  # pixels per latent cell of a Flux-style VAE; with the patch of 2, sizes are multiples of 16

# Z-Image 6B (all variants share the DiT shape).
TRANSFORMER_DEFAULTS = dict(
    all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=3840, n_layers=30, n_refiner_layers=2,
    n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560, rope_theta=256.0,
    t_scale=1000.0, axes_dims=[32, 48, 48], axes_lens=[1024, 512, 512],
)
TRANSFORMER_FIELDS = set(TRANSFORMER_DEFAULTS) | {"siglip_feat_dim"}

# component -> the model JSON field listing its files ("control" only where the type has "modules");
# the JSON keys are Wan2GP's, shared with its model JSONs
COMPONENT_FIELDS = {"transformer": "URLs", "control": "modules", "text_encoder": "text_encoder_URLs",
                    "vae": "vae_URLs", "tokenizer": "tokenizer"}


def load_asset(name: str) -> dict:
    return json.loads((ASSETS / name).read_text())


def metadata_config(metadata: dict) -> dict:
    """A model config stored in a file's header (Wan2GP's `config_base64`, or a plain `config`)."""
    from engine.jsontext import json_object_or_none

    raw = metadata.get("config_base64")
    try:
        text = base64.b64decode(raw) if isinstance(raw, str) and raw else metadata.get("config")
    except ValueError:
        return {}
    return json_object_or_none(text) or {}


def infer_transformer_config(path, shapes: dict, base: dict, overrides: dict) -> dict:
    """Config from diffusers-named shapes: `base` (folder or header config) < shapes < `overrides`."""
    config = {**TRANSFORMER_DEFAULTS, **{k: v for k, v in base.items() if k in TRANSFORMER_FIELDS}}
    try:
        dim, patch_in = shapes["all_x_embedder.2-1.weight"]
        head_dim = shapes["layers.0.attention.norm_q.weight"][0]
        inferred = dict(
            dim=dim, in_channels=patch_in // 4,
            n_layers=count_blocks(shapes, "layers"), n_refiner_layers=count_blocks(shapes, "noise_refiner"),
            n_heads=dim // head_dim, n_kv_heads=shapes["layers.0.attention.to_k.weight"][0] // head_dim,
            cap_feat_dim=shapes["cap_embedder.1.weight"][1],
        )
    except KeyError as exc:
        raise ModelFileError(path, f"not a complete Z-Image transformer: tensor {exc} is missing") from None
    config.update(inferred)
    if sum(config["axes_dims"]) != head_dim:
        config["axes_dims"] = rope_axes(head_dim)
    bad = sorted(set(overrides) - TRANSFORMER_FIELDS)
    if bad:
        raise ModelFileError(path, f"the model JSON's \"config\" has unknown field(s) {', '.join(bad)}")
    config.update(overrides)
    return config


def rope_axes(head_dim: int) -> list[int]:
    """RoPE axes (frame, height, width) in the real model's 1/4, 3/8, 3/8 proportion, each even."""
    frame = max(2, head_dim // 4 // 2 * 2)
    side = (head_dim - frame) // 2 // 2 * 2
    return [head_dim - 2 * side, side, side]


def infer_qwen3_config(path, shapes: dict, base: dict | None = None) -> dict:
    """Qwen3 config: shipped Qwen3-4B values (or a folder's config.json) with shapes from the weights."""
    config = {**load_asset("qwen3_4b_config.json"), **(base or {})}
    try:
        vocab, hidden = shapes["model.embed_tokens.weight"]
        head_dim = shapes["model.layers.0.self_attn.q_norm.weight"][0]
        config.update(
            vocab_size=vocab, hidden_size=hidden, head_dim=head_dim,
            num_hidden_layers=count_blocks(shapes, "model.layers"),
            num_attention_heads=shapes["model.layers.0.self_attn.q_proj.weight"][0] // head_dim,
            num_key_value_heads=shapes["model.layers.0.self_attn.k_proj.weight"][0] // head_dim,
            intermediate_size=shapes["model.layers.0.mlp.gate_proj.weight"][0],
            tie_word_embeddings="lm_head.weight" not in shapes,
        )
    except KeyError as exc:
        raise ModelFileError(path, f"not a complete Qwen3 text encoder: tensor {exc} is missing") from None
    config["max_window_layers"] = config["num_hidden_layers"]
    for special in ("pad_token_id", "bos_token_id", "eos_token_id"):  # a smaller vocabulary than Qwen3-4B's
        if (config.get(special) or 0) >= vocab:
            config[special] = None
    return config


def infer_vae_config(path, shapes: dict, base: dict | None = None) -> dict:
    """AutoencoderKL config from diffusers-named shapes over the shipped Flux VAE config."""
    config = {**load_asset("flux_vae_config.json"), **(base or {})}
    try:
        blocks = count_blocks(shapes, "encoder.down_blocks")
        config.update(
            block_out_channels=[shapes[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"][0] for i in range(blocks)],
            down_block_types=["DownEncoderBlock2D"] * blocks, up_block_types=["UpDecoderBlock2D"] * blocks,
            layers_per_block=count_blocks(shapes, "encoder.down_blocks.0.resnets"),
            in_channels=shapes["encoder.conv_in.weight"][1], out_channels=shapes["decoder.conv_out.weight"][0],
            latent_channels=shapes["encoder.conv_out.weight"][0] // 2,
            use_quant_conv="quant_conv.weight" in shapes, use_post_quant_conv="post_quant_conv.weight" in shapes,
        )
    except KeyError as exc:
        raise ModelFileError(path, f"not a complete VAE: tensor {exc} is missing") from None
    return {k: v for k, v in config.items() if not k.startswith("_")}
