"""Loading the Z-Image components from any layout: diffusers folders, original/ComfyUI single files,
Wan2GP files and all-in-one checkpoints. Each loader checks the header before reading any weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.weights import quantization as Q
from engine.weights.schemes import Scheme, scheme_for
from engine.errors import ModelFileError
from engine.weights.safetensors_io import TensorFileInfo, load_tensors, open_weights
from engine.weights.assign import assign_weights, build_empty, check_shapes
from models.z_image import keys as K
from models.z_image.attention import register as register_attention
from models.z_image.config import (infer_qwen3_config, infer_transformer_config, infer_vae_config,
                                   metadata_config)

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "chat_template.jinja", "added_tokens.json"]


def folder_config(path: Path) -> dict:
    cfg = Path(path) / "config.json" if Path(path).is_dir() else None
    return json.loads(cfg.read_text()) if cfg and cfg.is_file() else {}


def _not_found(info: TensorFileInfo, what: str) -> ModelFileError:
    keys = info.tensors
    reason = K.describe_foreign(keys)
    if reason is None:
        held = K.components_in(keys)
        reason = (f"it holds a {' and a '.join(held)}, not a {what}" if held
                  else f"no {what} tensors found (first names: {', '.join(list(keys)[:3]) or 'none'})")
    return ModelFileError(info.name, reason)


def _materialize(plan: dict, info: TensorFileInfo, names=None) -> dict:
    """The planned tensors (all, or `names`), memory-mapped; a row range slices a fused tensor."""
    names = list(plan) if names is None else list(names)
    sources = sorted({plan[n][0] for n in names})
    tensors = load_tensors(info, sources, aligned=[s for s in sources if s.endswith(Q.DATA)])
    return {name: (tensors[plan[name][0]] if plan[name][1] is None else
                   tensors[plan[name][0]][plan[name][1][0]:plan[name][1][1]]) for name in names}


def _scheme(plan: dict, info: TensorFileInfo) -> Scheme:
    """How the planned tensors are stored (plain, quanto INT8, ComfyUI fp8, GGUF), checked on the header."""
    return scheme_for(info.name, info, plan, lambda names: _materialize(plan, info, names))


def _fill(model, plan: dict, info: TensorFileInfo, scheme: Scheme, dtype: torch.dtype, tied=()) -> None:
    """Swap the quantized layers in (still on the meta device), then make the file's tensors the weights."""
    scheme.install(model, dtype, info.name)
    tensors = scheme.assign(model, _materialize(plan, info), dtype, info.name)
    assign_weights(model, tensors, dtype, tied)


def load_transformer(path: Path, overrides: dict, dtype: torch.dtype, device=None):
    """ZImageTransformer2DModel (plus TwinFlow's `t_embedder_2` when the file has it); INT8, fp8 and GGUF layers
    stay quantized (engine.weights.schemes). A Nunchaku SVDQ file loads through the nunchaku package."""
    from diffusers import ZImageTransformer2DModel
    from diffusers.models.transformers.transformer_z_image import TimestepEmbedder

    info = open_weights(path)
    if K.is_nunchaku(info.tensors):
        from models.z_image import nunchaku

        return nunchaku.load_transformer(path, info, dtype, device)
    K.check_supported_format(info.name, info.tensors)
    found = K.find_transformer(info.tensors)
    if not found:
        raise _not_found(info, "Z-Image transformer")
    shapes_in = {k: v[1] for k, v in info.tensors.items()}
    plan = K.transformer_plan(shapes_in, *found)
    scheme = _scheme(plan, info)
    shapes = scheme.logical_shapes(K.plan_shapes(plan, shapes_in))
    base = folder_config(path) or metadata_config(info.metadata)
    config = infer_transformer_config(info.name, shapes, base, overrides)

    def factory():
        model = ZImageTransformer2DModel(**config)
        if "t_embedder_2.mlp.0.weight" in shapes:  # TwinFlow's second time embedder
            mid, freq = shapes["t_embedder_2.mlp.0.weight"]
            model.t_embedder_2 = TimestepEmbedder(shapes["t_embedder_2.mlp.2.weight"][0], mid, freq)
        return model

    model = build_empty(factory)
    check_shapes(model, shapes, info.name, "Z-Image transformer")
    _fill(model, plan, info, scheme, dtype)
    model.weight_kind = scheme.kind
    return model


def load_text_encoder(path: Path, dtype: torch.dtype):
    """Qwen3ForCausalLM; a tied output head shares the input embedding's storage. INT8, fp8 and GGUF files as
    above; a GGUF file's llama.cpp names are mapped the way transformers maps them."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    info = open_weights(path)
    K.check_supported_format(info.name, info.tensors)
    base = folder_config(path)
    if info.format == "gguf" and K.find_text_encoder(info.tensors) is None:
        plan, base = _gguf_text_encoder_plan(info), {**gguf_qwen3_config(info.metadata), **base}
    else:
        prefix = K.find_text_encoder(info.tensors)
        if prefix is None:
            raise _not_found(info, "Qwen3 text encoder")
        plan = K.text_encoder_plan(info.tensors, prefix)
    scheme = _scheme(plan, info)
    shapes = scheme.logical_shapes(K.plan_shapes(plan, {k: v[1] for k, v in info.tensors.items()}))
    config = Qwen3Config(**infer_qwen3_config(info.name, shapes, base))
    model = build_empty(lambda: Qwen3ForCausalLM(config))
    model.set_attn_implementation(register_attention())
    tied = ("lm_head.weight",) if config.tie_word_embeddings else ()
    check_shapes(model, shapes, info.name, "Qwen3 text encoder", tied=tied)
    _fill(model, plan, info, scheme, dtype, tied)
    if tied and "model.embed_tokens" in scheme.gguf:
        from engine.weights.gguf_layers import tie_head

        tie_head(model)
    elif tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.weight_kind = scheme.kind
    return model


def _gguf_text_encoder_plan(info: TensorFileInfo) -> dict:
    """llama.cpp tensor names (token_embd, blk.N.attn_q, ...) -> Qwen3ForCausalLM names, through transformers'
    own GGUF name map (built on a meta model with the file's layer count)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    arch = info.metadata.get("general.architecture", "")
    if arch != "qwen3" or "token_embd.weight" not in info.tensors:
        raise _not_found(info, "Qwen3 text encoder")
    layers = K.count_blocks(info.tensors, "blk")
    probe = Qwen3Config(num_hidden_layers=layers, hidden_size=8, intermediate_size=8, num_attention_heads=1,
                        num_key_value_heads=1, head_dim=8, vocab_size=8)
    names = get_gguf_hf_weights_map(build_empty(lambda: Qwen3ForCausalLM(probe)), TensorProcessor())
    unknown = sorted(set(info.tensors) - set(names))
    if unknown:
        raise ModelFileError(info.name, f"GGUF tensor(s) with no Qwen3 meaning: {', '.join(unknown[:3])}")
    return {names[k]: (k, None) for k in info.tensors}


def gguf_qwen3_config(metadata: dict) -> dict:
    """The config values a llama.cpp Qwen3 header carries that shapes cannot tell."""
    fields = {"qwen3.rope.freq_base": ("rope_theta", float), "qwen3.context_length": ("max_position_embeddings", int),
              "qwen3.attention.layer_norm_rms_epsilon": ("rms_norm_eps", float)}
    return {name: cast(metadata[key]) for key, (name, cast) in fields.items() if key in metadata}


def load_vae(path: Path, dtype: torch.dtype):
    """AutoencoderKL from diffusers names or the Flux `ae.safetensors` LDM names."""
    from diffusers import AutoencoderKL

    info = open_weights(path)
    found = K.find_vae(info.tensors)
    if not found:
        raise _not_found(info, "VAE")
    prefix, style = found
    plan = {k[len(prefix):]: (k, None) for k in info.tensors if k.startswith(prefix)}
    shapes = K.plan_shapes(plan, {k: v[1] for k, v in info.tensors.items()})
    if style == "ldm":
        shapes = {k: tuple(v.shape) for k, v in _ldm_to_diffusers(_meta(shapes)).items()}
    config = infer_vae_config(info.name, shapes, folder_config(path))
    model = build_empty(lambda: AutoencoderKL(**config))
    check_shapes(model, shapes, info.name, "Flux-style 16-channel VAE")
    tensors = _materialize(plan, info)
    if any(hasattr(t, "quant_type") for t in tensors.values()):
        from engine.weights.gguf_layers import dequantize

        tensors = {k: dequantize(t, dtype).reshape(info.tensors[plan[k][0]][1]) if hasattr(t, "quant_type") else t
                   for k, t in tensors.items()}
    assign_weights(model, _ldm_to_diffusers(tensors) if style == "ldm" else tensors, dtype)
    return model


def _meta(shapes: dict) -> dict:
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


def _ldm_to_diffusers(tensors: dict) -> dict:
    """diffusers' own LDM->diffusers VAE converter; it only renames, slices and reshapes (meta-safe)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    blocks = K.count_blocks(tensors, "encoder.down")
    types = {"down_block_types": ["DownEncoderBlock2D"] * blocks, "up_block_types": ["UpDecoderBlock2D"] * blocks}
    return convert_ldm_vae_checkpoint(dict(tensors), types)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise ModelFileError(folder, "no tokenizer files here (tokenizer.json / tokenizer_config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise ModelFileError(folder, f"the tokenizer cannot be read: {exc}") from None
    if not tok.chat_template or tok.pad_token_id is None:
        raise ModelFileError(folder, "the tokenizer has no chat template or no pad token; Z-Image needs the "
                                     "Qwen3 tokenizer")
    return tok
