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
