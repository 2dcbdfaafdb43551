"""Writers for the file layouts users have, built from the tiny models (test-only inverse conversions)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.weights.assign import state_dict_for_file


def _fused_attention_keys(sd: dict, prefix: str, rename) -> dict:
    """diffusers attention names -> the original code's (fused qkv, out, q_norm/k_norm); `rename` maps the rest."""
    out = {}
    for name, t in sd.items():
        if ".attention.to_k." in name or ".attention.to_v." in name:
            continue
        if ".attention.to_q." in name:
            base = name.split(".attention.to_q.")[0]
            parts = [sd[f"{base}.attention.to_{p}.weight"] for p in "qkv"]
            out[f"{prefix}{base}.attention.qkv.weight"] = torch.cat(parts).contiguous()
            continue
        new = (rename(name).replace(".attention.to_out.0.", ".attention.out.")
               .replace(".attention.norm_q.", ".attention.q_norm.").replace(".attention.norm_k.", ".attention.k_norm."))
        out[prefix + new] = t
    return out


def to_original_keys(transformer_sd: dict, prefix: str = "", junk: bool = False) -> dict:
    """diffusers names -> original/ComfyUI names with fused qkv."""
    out = _fused_attention_keys(transformer_sd, prefix, lambda n: n.replace("all_x_embedder.2-1.", "x_embedder.")
                                .replace("all_final_layer.2-1.", "final_layer."))
    if junk:
        out[prefix + "norm_final.weight"] = torch.ones(4)
    return out


def to_ldm_vae_keys(vae_sd: dict, n_blocks: int, prefix: str = "") -> dict:
    """diffusers AutoencoderKL names -> the LDM names of Flux's ae.safetensors."""
    out = {}
    for name, t in vae_sd.items():
        new = name
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                     lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.block.{m[2]}.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", new)
        new = new.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if "mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            new = (new.replace("group_norm", "norm").replace("to_q", "q").replace("to_k", "k")
                   .replace("to_v", "v").replace("to_out.0", "proj_out"))
            if t.dim() == 2:
                t = t[:, :, None, None]
        out[prefix + new] = t.contiguous()
    return out


def write_comfyui(root: Path, models: dict, prefix: str = "", junk: bool = False) -> Path:
    """ComfyUI's models/ folder: diffusion_models/, text_encoders/, vae/ with their usual names."""
    for sub in ("diffusion_models", "text_encoders", "vae"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    save_file(to_original_keys(state_dict_for_file(models["transformer"]), prefix, junk),
              str(root / "diffusion_models" / "z_image_turbo_bf16.safetensors"))
    save_file(state_dict_for_file(models["text_encoder"]), str(root / "text_encoders" / "qwen_3_4b.safetensors"))
    n = len(models["vae"].config.block_out_channels)
    save_file(to_ldm_vae_keys(state_dict_for_file(models["vae"]), n), str(root / "vae" / "ae.safetensors"))
    return root


def write_all_in_one(path: Path, models: dict) -> Path:
    sd = to_original_keys(state_dict_for_file(models["transformer"]), "model.diffusion_model.")
    for k, v in state_dict_for_file(models["text_encoder"]).items():
        sd[f"text_encoders.qwen3_4b.transformer.{k}"] = v
    sd["text_encoders.qwen3_4b.logit_scale"] = torch.tensor(1.0)
    n = len(models["vae"].config.block_out_channels)
    sd.update(to_ldm_vae_keys(state_dict_for_file(models["vae"]), n, "vae."))
    save_file(sd, str(path))
    return path


def write_wan2gp(path: Path, model) -> Path:
    """diffusers names and the model config in the header, as Wan2GP writes its single files."""
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    meta = {"config_base64": base64.b64encode(json.dumps(config).encode()).decode()}
    save_file(state_dict_for_file(model), str(path), metadata=meta)
    return path


def write_diffusers_repo(folder: Path, models: dict, tokenizer) -> Path:
    """A whole diffusers repo (model_index.json + component folders), as on the hub."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=models["vae"],
                          text_encoder=models["text_encoder"], tokenizer=tokenizer,
                          transformer=models["transformer"])
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


# ---- Wan2GP / mmgp INT8 files (written here independently of the app's quantizer) -----------------

_SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32", torch.int8: "I8", torch.float16: "F16"}


def _b64(obj) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def quantize_rows(weight: torch.Tensor, scale_dtype=torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row absmax INT8: (int8 data, scale [rows, 1])."""
    scale = (weight.float().abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12).to(scale_dtype)
    data = (weight.float() / scale.float()).round().clamp(-127, 127).to(torch.int8)
    return data, scale


def write_raw_safetensors(path: Path, tensors: dict, metadata: dict) -> Path:
    """Tensors in the given order with no padding, as mmgp's writer does (so int8 data often starts unaligned)."""
    header, pos = {}, 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [pos, pos + size]}
        pos += size
    header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        for t in tensors.values():
            t = t.contiguous()
            fh.write((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return path


def write_wan2gp_int8(path: Path, model, stacks=("layers.",), scale_dtype=torch.bfloat16) -> Path:
    """A `*_quanto_bf16_int8.safetensors` file as Wan2GP ships it: bf16, the Linear layers of the repeated
    stacks as quanto INT8 (`weight._data`, `weight._scale`, `input_scale`, `output_scale`), the quantization
    map and the model config in the header."""
    sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state_dict_for_file(model).items()}
    out, qmap = {}, {}
    for name, t in sd.items():
        module = name[: -len(".weight")]
        linear = name.endswith(".weight") and type(model.get_submodule(module)) is torch.nn.Linear
        if linear and name.startswith(stacks):
            out[f"{module}.weight._data"], out[f"{module}.weight._scale"] = quantize_rows(t, scale_dtype)
            out[f"{module}.input_scale"] = torch.ones((), dtype=scale_dtype)
            out[f"{module}.output_scale"] = torch.ones((), dtype=scale_dtype)
            qmap[module] = {"weights": "qint8", "activations": "none"}
        else:
            out[name] = t
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    meta = {"quantization_format": "quanto", "quantization_map_base64": _b64(qmap), "config_base64": _b64(config)}
    return write_raw_safetensors(path, out, meta)


def to_comfyui_control_keys(control_sd: dict, prefix: str = "") -> dict:
    """Original (diffusers-named) control keys -> ComfyUI's in-memory names: fused qkv, out, q_norm/k_norm."""
    return _fused_attention_keys(control_sd, prefix, lambda n: n)


def write_control_diffusers_folder(folder: Path, control) -> Path:
    """A diffusers ZImageControlNetModel folder (config.json + safetensors)."""
    control.save_pretrained(str(folder), safe_serialization=True)
    return folder


# ---- GGUF files, written through the gguf package's GGUFWriter ------------------------------------------------

def quantize_q4_k(x):
    """Q4_K blocks (ggml's block_q4_K: fp16 d, fp16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles) of
    float32 rows whose length is a multiple of 256. The gguf package can read K-quants but not write them; this
    encoder is checked against its reader (tests/test_gguf.py)."""
    import numpy as np

    rows = x.reshape(-1, 8, 32).astype(np.float32)  # blocks of 256 = 8 sub-blocks of 32
    lo = np.minimum(rows.min(axis=2), 0)
    scale = (rows.max(axis=2) - lo) / 15
    d = (scale.reshape(-1, 8).max(axis=1, keepdims=True) / 63).astype(np.float16)
    dmin = ((-lo).max(axis=1, keepdims=True) / 63).astype(np.float16)
    safe = lambda a: np.where(a == 0, 1, a)  # noqa: E731
    sc = np.clip(np.round(scale / safe(d.astype(np.float32))), 0, 63).astype(np.uint8)
    mn = np.clip(np.round(-lo / safe(dmin.astype(np.float32))), 0, 63).astype(np.uint8)
    step = d.astype(np.float32) * sc
    q = np.clip(np.round((rows + (dmin.astype(np.float32) * mn)[..., None]) / safe(step)[..., None]), 0, 15)
    q = np.where(step[..., None] == 0, 0, q).astype(np.uint8)
    packed = np.empty((rows.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = (sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = (mn[:, :4] & 0x3F) | ((mn[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    nibbles = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)  # sub-blocks 2c (low) and 2c+1 (high)
    blocks = np.concatenate([d.view(np.uint8), dmin.view(np.uint8), packed, nibbles], axis=1)
    return blocks.reshape(x.shape[0], -1)


def _gguf_quantize(data, qtype):
    import gguf

    if qtype == gguf.GGMLQuantizationType.F32:
        return data.astype("float32")
    if qtype == gguf.GGMLQuantizationType.Q4_K:
        return quantize_q4_k(data)
    return gguf.quants.quantize(data, qtype)


# llama-quantize with ComfyUI-GGUF's patch (tools/lcpp.patch): for lumina2 these stay as converted (BF16)
_LUMINA2_KEEP = ("t_embedder.", "x_embedder.", "final_layer.", "cap_embedder.", "context_refiner.", "noise_refiner.")


def _comfy_gguf_type(name: str, data, ftype: str, keep=_LUMINA2_KEEP):
    """The GGML type ComfyUI-GGUF's convert.py + patched llama-quantize give a Z-Image ("lumina2") tensor:
    1-D and tiny tensors F32, the embedders/refiners/final layer BF16, the main layers the chosen type with the
    patch's Q4_0 bump (feed_forward.w2 -> Q4_1), and F16 where a K-quant does not fit the row length. Its Q4_K_M
    bumps (qkv -> Q5_K, w2 -> Q6_K) are left out: this writer encodes Q4_K only (the other K types' decoding is
    checked block by block against gguf's reader in tests/test_gguf.py)."""
    import gguf

    T = gguf.GGMLQuantizationType
    if data.ndim == 1 or data.size <= 1024:
        return T.F32
    if any(k in name for k in keep) or data.ndim != 2:
        return T.BF16
    qtype = {"Q8_0": T.Q8_0, "Q4_0": T.Q4_0, "Q4_K_M": T.Q4_K}[ftype]
    if ftype == "Q4_0" and name.endswith(".feed_forward.w2.weight"):
        qtype = T.Q4_1
    if qtype == T.Q4_K and data.shape[-1] % 256:
        qtype = T.F16
    return qtype


def write_comfyui_gguf(path: Path, transformer, ftype: str = "Q8_0", prefix: str = "", keep=_LUMINA2_KEEP) -> Path:
    """A Z-Image transformer GGUF as ComfyUI-GGUF's tools write one (convert.py: arch "lumina2", original names
    with fused qkv, bf16 data; then llama-quantize): through gguf.GGUFWriter. `keep=()` quantizes every 2-D
    weight, refiners and embedders too, as leejet's stable-diffusion.cpp files do (their Q4_0 is 0.30x bf16)."""
    import gguf

    sd = to_original_keys(state_dict_for_file(transformer), prefix)
    writer = gguf.GGUFWriter(path=None, arch="lumina2")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type({"Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
                          "Q4_K_M": gguf.LlamaFileType.MOSTLY_Q4_K_M}[ftype])
    for name, t in sd.items():
        data = t.to(torch.bfloat16).float().numpy()  # convert.py: bf16 weights through float32
        qtype = _comfy_gguf_type(name, data, ftype, keep)
        try:
            blocks = _gguf_quantize(data, qtype) if qtype != gguf.GGMLQuantizationType.F16 else None
        except gguf.QuantError:  # a row length the type's blocks do not divide: F16, as convert.py falls back
            blocks, qtype = None, gguf.GGMLQuantizationType.F16
        if blocks is None:
            writer.add_tensor(name, data.astype("float16"))
        else:
            writer.add_tensor(name, blocks, raw_dtype=None if qtype == gguf.GGMLQuantizationType.F32 else qtype)
    _write_gguf(writer, path)
    return path


def _write_gguf(writer, path: Path) -> None:
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_llama_cpp_qwen3_gguf(path: Path, encoder, ftype: str = "Q8_0") -> Path:
    """A Qwen3 text encoder GGUF as llama.cpp's convert_hf_to_gguf.py + llama-quantize write one: arch "qwen3",
    llama.cpp tensor names from the gguf package's own name table, the hparams in `qwen3.*` keys, no output.weight
    when the head is tied, norms F32, the rest `ftype`."""
    import gguf

    config = encoder.config
    arch = gguf.MODEL_ARCH.QWEN3
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name("Qwen3 tiny")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"] if hasattr(config, "rope_parameters")
                              else config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if ftype == "Q8_0" else gguf.LlamaFileType.MOSTLY_Q4_0)
    qtype = gguf.GGMLQuantizationType[ftype]
    for hf_name, t in state_dict_for_file(encoder).items():
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        data = t.to(torch.bfloat16).float().numpy()
        try:
            writer.add_tensor(new, data if data.ndim == 1 else gguf.quants.quantize(data, qtype),
                              raw_dtype=None if data.ndim == 1 else qtype)
        except gguf.QuantError:  # llama-quantize keeps rows its blocks do not divide in F16
            writer.add_tensor(new, data.astype("float16"))
    _write_gguf(writer, path)
    return path


# ---- ComfyUI fp8 files ---------------------------------------------------------------------------------

def _fp8_rows(t: torch.Tensor, fp8=torch.float8_e4m3fn):
    """Per-tensor scaled fp8 as ComfyUI's quantizers make it: scale = max|w| / fp8 max, fp8 = w / scale."""
    scale = (t.float().abs().amax() / torch.finfo(fp8).max).clamp(min=1e-12)
    return (t.float() / scale).clamp(torch.finfo(fp8).min, torch.finfo(fp8).max).to(fp8), scale.reshape(())


def _block_linears(sd: dict, stacks=("layers.", "noise_refiner.", "context_refiner.")) -> list[str]:
    return [k for k, v in sd.items() if k.endswith(".weight") and k.startswith(stacks) and v.dim() == 2]


def write_comfyui_scaled_fp8(path: Path, transformer, prefix: str = "", scale_input: bool = True) -> Path:
    """ComfyUI's legacy "scaled fp8" layout: original names, a `scaled_fp8` marker (an empty e4m3fn tensor), per
    quantized Linear `<m>.weight` (e4m3fn) + `<m>.scale_weight` (float32 scalar) and `<m>.scale_input` (1.0,
    uncalibrated); everything else bf16."""
    sd = {k: v.to(torch.bfloat16) for k, v in to_original_keys(state_dict_for_file(transformer), prefix).items()}
    out = dict(sd)
    for key in _block_linears(sd, tuple(prefix + s for s in ("layers.", "noise_refiner.", "context_refiner."))):
        module = key[: -len(".weight")]
        out[key], out[f"{module}.scale_weight"] = _fp8_rows(sd[key])
        if scale_input:
            out[f"{module}.scale_input"] = torch.ones((), dtype=torch.float32)
    out[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file(out, str(path))
    return path


def write_comfyui_mixed_fp8(path: Path, model, stacks=("layers.",), original_names: bool = True,
                            in_header: bool = False, fmt: str = "float8_e4m3fn") -> Path:
    """ComfyUI's mixed-precision layout (as Comfy-Org's `*_fp8_mixed` files): quantized Linears as `<m>.weight`
    (fp8) + `<m>.weight_scale` (float32 scalar) + `<m>.comfy_quant` (the layer's JSON config as uint8 bytes), or
    the configs in the header's `_quantization_metadata`; every other tensor bf16 (mixed per layer)."""
    sd = state_dict_for_file(model)
    if original_names:
        sd = to_original_keys(sd)
    sd = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    out, layers = dict(sd), {}
    fp8 = getattr(torch, fmt)
    for key in _block_linears(sd, stacks):
        module = key[: -len(".weight")]
        if module.endswith(".feed_forward.w2") or module.endswith(".mlp.down_proj"):
            continue  # mixed: these stay bf16, as sensitive layers do in the real files
        out[key], out[f"{module}.weight_scale"] = _fp8_rows(sd[key], fp8)
        conf = {"format": fmt}
        layers[module] = conf
        if not in_header:
            out[f"{module}.comfy_quant"] = torch.tensor(list(json.dumps(conf).encode()), dtype=torch.uint8)
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})} if in_header else None
    save_file(out, str(path), metadata=meta)
    return path
