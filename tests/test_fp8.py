"""ComfyUI fp8 files (plain e4m3fn/e5m2, legacy scaled fp8, the new mixed layout) load with their Linear weights
kept in fp8, generate close to the bf16 image, and are recognised; fp8 matmuls are used only where the GPU has
them; damaged or unsupported layouts are named.

PSNR bounds against the tiny model's bf16 image (measured: scaled 52 dB, mixed 54 dB, plain e4m3fn 54 dB, mixed
text encoder 63 dB): scaled and mixed >= 35 dB, plain e4m3fn >= 30 dB (no scale: small weights land in fp8's
coarse subnormal range, so it has the least margin), mixed text encoder >= 35 dB.
"""

import json

import pytest
import torch
from safetensors.torch import save_file

from engine.errors import ModelFileError
from engine.weights import fp8 as F8
from engine.weights import formats
from engine.weights.assign import state_dict_for_file
from models.z_image import loader
from tests import layouts
from tests.test_gguf import engine_for, image, psnr

BOUNDS = {"scaled": 35.0, "mixed": 35.0, "plain": 30.0}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_models):
    from models.z_image import tiny

    root = tmp_path_factory.mktemp("fp8")
    tr = tiny_models["transformer"]
    plain = {k: v.to(torch.float8_e4m3fn) if k.startswith("layers.") and v.dim() == 2 else v.to(torch.bfloat16)
             for k, v in layouts.to_original_keys(state_dict_for_file(tr)).items()}
    save_file(plain, str(root / "z_image_turbo_fp8_e4m3fn.safetensors"))
    return {
        "fields": tiny.write_parts(root, tiny_models, torch.bfloat16, suffix="_bf16"), "root": root,
        "plain": root / "z_image_turbo_fp8_e4m3fn.safetensors",
        "scaled": layouts.write_comfyui_scaled_fp8(root / "z_image_turbo_fp8_scaled.safetensors", tr,
                                                   prefix="model.diffusion_model."),
        "mixed": layouts.write_comfyui_mixed_fp8(root / "z_image_turbo_fp8_mixed.safetensors", tr),
        "te": layouts.write_comfyui_mixed_fp8(root / "qwen_3_4b_fp8_mixed.safetensors", tiny_models["text_encoder"],
                                              stacks=("model.layers.",), original_names=False, in_header=True),
    }


@pytest.fixture(scope="module")
def reference(files):
    return image(engine_for(files, "ref_bf16"), "ref_bf16")


@pytest.mark.parametrize("layout", list(BOUNDS))
def test_fp8_transformer_generates_close_to_bf16(files, reference, layout):
    engine = engine_for(files, f"fp8_{layout}", URLs=files[layout])
    value = psnr(reference, image(engine, f"fp8_{layout}"))
    print(f"\nPSNR fp8 {layout} transformer vs bf16 image: {value:.1f} dB (bound {BOUNDS[layout]})")
    assert value >= BOUNDS[layout]
    tr = engine.model.transformer
    assert engine.model.load_info["transformer"] == "fp8"
    q, w1 = tr.layers[0].attention.to_q, tr.layers[1].feed_forward.w1
    assert type(q).__name__ == "FP8Linear" and q.weight.dtype == torch.float8_e4m3fn  # kept fp8, a slice of qkv
    assert q.weight.shape == (tr.config.dim, tr.config.dim) and w1.weight.dtype == torch.float8_e4m3fn
    if layout != "plain":
        k = tr.layers[0].attention.to_k
        assert q.weight_scale is not None and float(q.weight_scale) == float(k.weight_scale)  # one scale for qkv
        assert q.input_scale is None  # ComfyUI's 1.0 means "not calibrated"
    w2 = tr.layers[0].feed_forward.w2
    assert (type(w2) is torch.nn.Linear) == (layout == "mixed")  # mixed: w2 stays bf16 in the file


def test_fp8_mixed_text_encoder_with_header_metadata(files, reference, tiny_models):
    engine = engine_for(files, "fp8_te", text_encoder_URLs=files["te"])
    value = psnr(reference, image(engine, "fp8_te"))
    print(f"\nPSNR fp8 mixed text encoder vs bf16 image: {value:.1f} dB (bound 35)")
    assert value >= 35
    te = engine.model.encoder.text_encoder
    assert type(te.model.layers[0].self_attn.q_proj).__name__ == "FP8Linear"
    assert type(te.model.layers[0].mlp.down_proj) is torch.nn.Linear


def test_kinds_are_recognised(files):
    assert formats.describe(files["scaled"]) == "fp8 scaled e4m3fn"
    assert formats.describe(files["mixed"]) == "fp8 mixed" and formats.describe(files["te"]) == "fp8 mixed"
    assert formats.describe(files["plain"]) == "fp8 e4m3fn"
    assert formats.kind_from_name("qwen_3_4b_fp8_mixed.safetensors") == "fp8"


def test_e5m2_and_uint8_stored_fp8(tmp_path, tiny_models):
    """e5m2 weights, and fp8 bytes stored as uint8 with a comfy_quant config (older ComfyUI writers)."""
    sd = state_dict_for_file(tiny_models["transformer"])
    name = "layers.0.feed_forward.w1.weight"
    e5 = {k: (v.to(torch.float8_e5m2) if k == name else v) for k, v in sd.items()}
    save_file(e5, str(tmp_path / "e5.safetensors"))
    model = loader.load_transformer(tmp_path / "e5.safetensors", {}, torch.float32)
    assert model.layers[0].feed_forward.w1.weight.dtype == torch.float8_e5m2
    w8, scale = layouts._fp8_rows(sd[name])
    u8 = {**sd, name: w8.view(torch.uint8), name[: -len("weight")] + "weight_scale": scale,
          name[: -len("weight")] + "comfy_quant": torch.tensor(list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8)}
    save_file(u8, str(tmp_path / "u8.safetensors"))
    w1 = loader.load_transformer(tmp_path / "u8.safetensors", {}, torch.float32).layers[0].feed_forward.w1
    assert w1.weight.dtype == torch.float8_e4m3fn
    torch.testing.assert_close(w1.weight.float() * w1.weight_scale, sd[name], atol=float(scale) * 32, rtol=0.07)


def test_fp8_matmul_only_where_the_gpu_has_it(files, monkeypatch):
    """torch._scaled_mm runs on fp8 tensor cores (compute capability 8.9+); forced here on the CPU (where torch
    has it too), its output matches the cast-and-multiply path; the capability check decides on CUDA."""
    model = loader.load_transformer(files["scaled"], {}, torch.bfloat16)
    layer = model.layers[0].attention.to_q  # [64, 64]: fp8 matmuls need sizes in multiples of 16
    x = torch.randn(2, 7, layer.in_features, dtype=torch.bfloat16)
    layer.use_scaled_mm = False
    cast = layer(x).float()
    calls = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(k) or real(*a, **k))
    layer.use_scaled_mm = True
    fast = layer(x).float()
    assert calls and calls[0]["out_dtype"] == torch.bfloat16 and calls[0]["scale_b"].item() == layer.weight_scale.item()
    assert (fast - cast).norm() / cast.norm() < 0.08  # the input is quantized to fp8 too
    layer.full_precision = True  # a file's full_precision_matrix_mult flag
    calls.clear()
    layer(x)
    assert not calls

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, expected in (((8, 6), False), ((8, 9), True), ((12, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert F8.scaled_mm_available(torch.device("cuda")) is expected
    assert not F8.scaled_mm_available(torch.device("cpu"))


def test_unsupported_and_damaged_fp8_files_named(tmp_path, tiny_models):
    sd = state_dict_for_file(tiny_models["transformer"])
    name = "layers.0.feed_forward.w1"
    nvfp4 = {**sd, f"{name}.weight_scale": torch.ones(()),
             f"{name}.comfy_quant": torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()), dtype=torch.uint8)}
    save_file(nvfp4, str(tmp_path / "nvfp4.safetensors"))
    with pytest.raises(ModelFileError, match="quantized as 'nvfp4'"):
        loader.load_transformer(tmp_path / "nvfp4.safetensors", {}, torch.float32)
    stray = {**sd, f"{name}.scale_weight": torch.ones(()), "scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    stray[f"{name}.weight"] = stray[f"{name}.weight"].to(torch.float8_e4m3fn)
    stray["layers.0.feed_forward.w3.scale_weight"] = torch.ones(())  # a scale whose weight is not fp8
    del stray[f"{name}.scale_weight"]
    save_file(stray, str(tmp_path / "stray.safetensors"))
    with pytest.raises(ModelFileError, match="w3.scale_weight"):
        loader.load_transformer(tmp_path / "stray.safetensors", {}, torch.float32)
    meta = {"_quantization_metadata": "{not json"}
    save_file(sd, str(tmp_path / "meta.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="_quantization_metadata"):
        loader.load_transformer(tmp_path / "meta.safetensors", {}, torch.float32)


def test_fp8_files_in_comfyui_folders_listed_by_models(files, tmp_path, capsys):
    import shutil

    from app.cli import main

    comfy = tmp_path / "models"
    (comfy / "diffusion_models").mkdir(parents=True)
    (comfy / "text_encoders").mkdir()
    shutil.copy(files["scaled"], comfy / "diffusion_models" / "z_image_turbo_fp8_scaled_e4m3fn_KJ.safetensors")
    shutil.copy(files["te"], comfy / "text_encoders" / "qwen_3_4b_fp8_mixed.safetensors")
    assert main(["models", "--comfyui-models", str(comfy), "--checkpoints", str(tmp_path / "ck"),
                 "--transformer-quantization", "fp8", "--text-encoder-quantization", "fp8"]) == 0
    block = capsys.readouterr().out.split("z_image:")[1].split("\nz_image_")[0]
    assert "z_image_turbo_fp8_scaled_e4m3fn_KJ.safetensors  [fp8 scaled e4m3fn]" in block
    assert "qwen_3_4b_fp8_mixed.safetensors  [fp8 mixed]" in block
