"""Tiny random-weight Z-Image models for tests, benchmarks and clicking through the app offline.

They have the real architecture at a toy size and draw noise, not pictures. Everything is made here,
with no network: the transformer, a Qwen3 encoder with a 256-symbol byte tokenizer, and a 16-channel VAE.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.weights.assign import state_dict_for_file
from models.z_image.config import COMPONENT_FIELDS

# A Qwen3-style chat template: enable_thinking=True (what Z-Image uses) adds no think block.
CHAT_TEMPLATE = (
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def transformer_config(dim=64, n_layers=2, heads=2, cap_dim=32, refiner_layers=1) -> dict:
    from models.z_image.config import TRANSFORMER_DEFAULTS, rope_axes

    return {**TRANSFORMER_DEFAULTS, "dim": dim, "n_layers": n_layers, "n_heads": heads, "n_kv_heads": heads,
            "n_refiner_layers": refiner_layers, "cap_feat_dim": cap_dim, "axes_dims": rope_axes(dim // heads)}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (the real init leaves pad tokens and some gates at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / max(1, p.shape[-1]) ** 0.5) + ("norm" in name))


def make_transformer(seed=0, twinflow=False, **kw):
    from diffusers import ZImageTransformer2DModel
    from diffusers.models.transformers.transformer_z_image import TimestepEmbedder

    model = ZImageTransformer2DModel(**transformer_config(**kw))
    if twinflow:
        model.t_embedder_2 = TimestepEmbedder(min(model.dim, 256), mid_size=1024)
    _randomize(model, seed)
    return model.eval()


def make_text_encoder(seed=1, hidden=32, layers=3, heads=2, kv_heads=1, vocab=len(SPECIALS) + 256, intermediate=None):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         head_dim=hidden // heads, max_position_embeddings=1024, tie_word_embeddings=True,
                         pad_token_id=256, rope_theta=1e6)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    _randomize(model, seed)
    model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def make_vae(seed=2, channels=(32, 32, 32, 32)):
    from diffusers import AutoencoderKL

    n = len(channels)
    model = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=list(channels),
                          down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                          layers_per_block=1, norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159,
                          use_quant_conv=False, use_post_quant_conv=False)
    torch.manual_seed(seed)
    return model.eval()


def make_tokenizer():
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    vocab[SPECIALS[0]] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token=SPECIALS[0])
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def write_parts(folder, parts: dict, dtype=None, suffix: str = "") -> dict:
    """Each model of `parts` ({"transformer": ..., "text_encoder": ..., "vae": ...}) as one safetensors file
    with diffusers names, <folder>/<part><suffix>.safetensors (cast to `dtype` if given), and a tokenizer
    folder; returns the model JSON fields naming them."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fields = {}
    for part, model in parts.items():
        sd = state_dict_for_file(model)
        if dtype is not None:
            sd = {k: v.to(dtype) for k, v in sd.items()}
        path = folder / f"{part}{suffix}.safetensors"
        save_file(sd, str(path))
        fields[COMPONENT_FIELDS[part]] = str(path.resolve())
    make_tokenizer().save_pretrained(str(folder / "tokenizer"))
    return {**fields, COMPONENT_FIELDS["tokenizer"]: str((folder / "tokenizer").resolve())}


def write_test_model(folder, name: str = "z_image_tiny_test", dtype=torch.float32, **transformer_kw) -> Path:
    """Single files with diffusers names, a tokenizer folder and a model JSON; returns the JSON's path."""
    parts = {"transformer": make_transformer(**transformer_kw), "text_encoder": make_text_encoder(),
             "vae": make_vae()}
    model_json = {
        "model": {
            "name": "Tiny test model (random weights: draws noise)",
            "architecture": "z_image",
            "description": "A toy-sized Z-Image with random weights, for trying the app and its tests offline.",
            **write_parts(folder, parts, dtype),
        },
        "num_inference_steps": 8, "guidance_scale": 0.0, "flow_shift": 3.0, "resolution": "256x256",
    }
    path = Path(folder) / f"{name}.json"
    path.write_text(json.dumps(model_json, indent=2))
    return path


CONTROL_VERSIONS = {"1.0": None, "2.0": "control_noise_refiner", "2.1": "control_noise_refiner"}


def make_control(transformer, version: str = "2.1", n_control: int | None = None, seed: int = 3):
    """A random Fun-ControlNet-Union module for `transformer`, with the tensors an original file of `version` has.

    2.0 files carry an untrained (all-zero projection) control refiner; 1.0 has 16 input channels, 2.x 33.
    Every other weight is random, so control visibly changes the output.
    """
    from diffusers import ZImageControlNetModel

    cfg = transformer.config
    n_control = n_control or max(1, cfg.n_layers // 2)
    inpaint = version != "1.0"
    model = ZImageControlNetModel(
        control_layers_places=[i * (cfg.n_layers // n_control) for i in range(n_control)],
        control_refiner_layers_places=list(range(cfg.n_refiner_layers)) if inpaint else None,
        control_in_dim=cfg.in_channels * 2 + 1 if inpaint else cfg.in_channels,
        add_control_noise_refiner=CONTROL_VERSIONS[version], dim=cfg.dim, n_refiner_layers=cfg.n_refiner_layers,
        n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads)
    _randomize(model, seed)
    if version == "2.0":
        with torch.no_grad():
            for block in model.control_noise_refiner:
                for proj in ("before_proj", "after_proj"):
                    if hasattr(block, proj):
                        getattr(block, proj).weight.zero_()
                        getattr(block, proj).bias.zero_()
    return model.eval()


def write_control_test_model(folder, version: str = "2.1", name: str = "z_image_control_tiny_test") -> Path:
    """A tiny Turbo + Fun-ControlNet-Union `version` beside write_test_model's files; returns its JSON's path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if not (folder / "vae.safetensors").is_file():
        write_test_model(folder)
    transformer = make_transformer(n_layers=4, refiner_layers=2)
    save_file(state_dict_for_file(transformer), str(folder / "control_transformer.safetensors"))
    save_file(state_dict_for_file(make_control(transformer, version, 2)), str(folder / "control_module.safetensors"))
    arch = {"1.0": "z_image_control", "2.0": "z_image_control2", "2.1": "z_image_control2_1"}[version]
    model_json = {
        "model": {
            "name": f"Tiny control test model, Fun-ControlNet-Union {version} (random weights: draws noise)",
            "architecture": arch,
            "description": "A toy-sized control model with random weights, for trying control and inpaint offline.",
            "URLs": str((folder / "control_transformer.safetensors").resolve()),
            "modules": str((folder / "control_module.safetensors").resolve()),
            "text_encoder_URLs": str((folder / "text_encoder.safetensors").resolve()),
            "vae_URLs": str((folder / "vae.safetensors").resolve()),
            "tokenizer": str((folder / "tokenizer").resolve()),
        },
        "num_inference_steps": 4, "guidance_scale": 0.0, "flow_shift": 3.0, "resolution": "256x256",
        "control_weight": 0.9,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(model_json, indent=2))
    return path


def diffusers_controlnet(module, version: str):
    """diffusers' own ZImageControlNetModel with the weights of `module` (made by make_control), to compare
    against: diffusers reads a 2.0 file's control refiner as a second pass of its control layers."""
    from diffusers import ZImageControlNetModel

    cfg = {k: v for k, v in module.config.items() if not k.startswith("_")}
    sd = module.state_dict()
    if version == "2.0":
        cfg["add_control_noise_refiner"] = "control_layers"
        sd = {k: v for k, v in sd.items() if not k.startswith("control_noise_refiner.")}
    net = ZImageControlNetModel(**cfg)
    net.load_state_dict(sd)
    return net
