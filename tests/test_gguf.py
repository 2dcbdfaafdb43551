"""GGUF files as ComfyUI-GGUF and llama.cpp write them (through the gguf package's GGUFWriter): they load with
their layers kept quantized, generate close to the bf16 image, are found in ComfyUI's folders and recognised in
`python app.py models`; damaged ones are named.

PSNR bounds against the image of the same tiny model's bf16 files (measured: Q8_0 62 dB, Q4_0 47 dB, Q8_0 text
encoder 71 dB): Q8_0 >= 40 dB, Q4_0 >= 30 dB, Q8_0 text encoder >= 40 dB.
"""

import json

import numpy as np
import pytest
import torch

from engine.engine import Engine
from engine.errors import ModelFileError
from engine.registry import ROOT, Registry
from engine.weights import gguf_layers
from engine.weights.files import FileLocator
from engine.weights.safetensors_io import open_weights
from models import families
from models.z_image import loader, tiny
from tests import layouts

BOUNDS = {"Q8_0": 40.0, "Q4_0": 30.0}


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_models):
    """bf16 files of the tiny model (the reference) and GGUF files of the same weights."""
    root = tmp_path_factory.mktemp("gguf")
    fields = tiny.write_parts(root, tiny_models, torch.bfloat16, suffix="_bf16")
    out = {"fields": fields, "root": root}
    for ftype in BOUNDS:
        out[ftype] = layouts.write_comfyui_gguf(root / f"z_image_turbo-{ftype}.gguf", tiny_models["transformer"], ftype)
    out["te"] = layouts.write_llama_cpp_qwen3_gguf(root / "Qwen3-4B-Q8_0.gguf", tiny_models["text_encoder"])
    return out


def engine_for(files, name, options=None, **components):
    folder = files["root"] / f"ft_{name}"
    folder.mkdir(exist_ok=True)
    data = {"model": {"architecture": "z_image", **files["fields"], **{k: str(v) for k, v in components.items()}}}
    (folder / f"{name}.json").write_text(json.dumps(data))
    return Engine(Registry(families(), (ROOT / "defaults", folder)), FileLocator(files["root"] / "ck", offline=True),
                  options=options)


def image(engine, name):
    s = engine.settings_for(name, prompt="a lighthouse at dusk", seed=3, width=256, height=256, num_inference_steps=4)
    return np.asarray(engine.generate(s)[0].image)


@pytest.fixture(scope="module")
def reference(files):
    return image(engine_for(files, "ref_bf16"), "ref_bf16")


@pytest.mark.parametrize("ftype", list(BOUNDS))
def test_gguf_transformer_generates_close_to_bf16(files, reference, tiny_models, ftype):
    engine = engine_for(files, f"gguf_{ftype}", URLs=files[ftype])
    value = psnr(reference, image(engine, f"gguf_{ftype}"))
    print(f"\nPSNR GGUF {ftype} transformer vs bf16 image: {value:.1f} dB (bound {BOUNDS[ftype]})")
    assert value >= BOUNDS[ftype]
    model = engine.model
    assert model.load_info["transformer"] == "gguf"
    # the main layers stay quantized, with the types the writer chose (Q4_0 files bump w2 to Q4_1; rows of 170
    # fall back to F16 in ComfyUI-GGUF's tools, so they are plain here)
    w1 = model.transformer.layers[0].feed_forward.w1
    assert type(w1).__name__ == "GGUFLinear" and w1.weight.quant_type.name == ftype
    q = model.transformer.layers[0].attention.to_q.weight
    assert q.quant_type.name == ftype and q.shape[0] == tiny_models["transformer"].config.dim  # a slice of qkv
    assert type(model.transformer.noise_refiner[0].feed_forward.w1) is torch.nn.Linear  # kept BF16 in the file
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[w1.weight.quant_type]  # kept as the file's blocks, not dequantized
    assert w1.weight.dtype == torch.uint8 and w1.weight.numel() == w1.out_features * w1.in_features // block * size


def test_gguf_text_encoder_with_llama_cpp_names(files, reference, tiny_models):
    engine = engine_for(files, "gguf_te", text_encoder_URLs=files["te"])
    value = psnr(reference, image(engine, "gguf_te"))
    print(f"\nPSNR GGUF Q8_0 text encoder vs bf16 image: {value:.1f} dB (bound 40)")
    assert value >= 40
    te = engine.model.encoder.text_encoder
    assert engine.model.load_info["text_encoder"] == "gguf"
    assert type(te.model.embed_tokens).__name__ == "GGUFEmbedding"
    assert te.lm_head.weight is te.model.embed_tokens.weight  # tied head shares the quantized table
    ref = tiny_models["text_encoder"]
    assert te.config.num_hidden_layers == ref.config.num_hidden_layers
    assert te.config.num_key_value_heads == ref.config.num_key_value_heads
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        got, want = te.model(input_ids=ids).last_hidden_state, ref.model(input_ids=ids).last_hidden_state
        logits = te.lm_head(got[:, -1])
    assert (got - want).norm() / want.norm() < 0.05 and logits.shape[-1] == ref.config.vocab_size


def _random_blocks(qtype, n_blocks, gen):
    """Random blocks of a GGML type with every fp16 scale field set to a small finite value."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(gen).integers(0, 256, (n_blocks, size), dtype=np.uint8)
    fp16_fields = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (size - 2,), "Q3_K": (size - 2,), "Q2_K": (size - 4, size - 2)}
    for offset in fp16_fields.get(qtype.name, (0, 2) if qtype.name in ("Q4_1", "Q5_1") else (0,)):
        raw[:, offset:offset + 2] = np.frombuffer(np.float16(0.01 + 0.002 * (offset % 7)).tobytes(), np.uint8)
    return raw


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_blocks_dequantize_like_the_gguf_reference(name):
    """Every block layout decodes to what the gguf package's own (numpy) reader gives."""
    import gguf
    from diffusers.quantizers.gguf.utils import GGUFParameter

    qtype = gguf.GGMLQuantizationType[name]
    raw = _random_blocks(qtype, 6, 0).reshape(3, -1)
    want = gguf.quants.dequantize(raw, qtype)
    got = gguf_layers.dequantize(GGUFParameter(torch.from_numpy(raw), quant_type=qtype), torch.float32)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_q4_k_transformer_loads_and_runs(tmp_path):
    """A K-quant file (Q4_K blocks of 256 values, so a 256-wide model) loads and runs close to bf16."""
    import gguf

    model = tiny.make_transformer(dim=256, heads=2)
    path = layouts.write_comfyui_gguf(tmp_path / "z_image_turbo-Q4_K_M.gguf", model, "Q4_K_M")
    info = open_weights(path)
    assert info.tensors["layers.0.attention.qkv.weight"][0] == "Q4_K"
    blocks = info.handle.tensors[[t.name for t in info.handle.tensors].index("layers.0.attention.qkv.weight")]
    source = layouts.to_original_keys({k: v.bfloat16().float() for k, v in model.state_dict().items()})
    decoded = gguf.quants.dequantize(blocks.data, gguf.GGMLQuantizationType.Q4_K)  # the test encoder is right
    assert np.abs(decoded - source["layers.0.attention.qkv.weight"].numpy()).max() < 0.02
    loaded = loader.load_transformer(path, {}, torch.float32)
    x, t, cap = [torch.randn(16, 1, 16, 16)], torch.tensor([0.4]), [torch.randn(9, 32)]
    with torch.no_grad():
        got = loaded(x, t, cap, return_dict=False)[0][0]
        want = model(x, t, cap, return_dict=False)[0][0]
    assert (got - want).norm() / want.norm() < 0.1


def test_found_in_comfyui_folders_and_listed(files, tmp_path, capsys):
    """ComfyUI-GGUF users keep GGUFs in models/unet (or diffusion_models) and models/text_encoders: the shipped
    z_image type finds them there, `models` shows them as usable, and they generate."""
    import shutil

    from app.cli import main

    comfy = tmp_path / "ComfyUI" / "models"
    for sub in ("unet", "text_encoders", "vae"):
        (comfy / sub).mkdir(parents=True)
    shutil.copy(files["Q4_0"], comfy / "unet" / "z_image_turbo-Q4_0.gguf")
    shutil.copy(files["te"], comfy / "text_encoders" / "Qwen3-4B-Q8_0.gguf")
    common = ["--comfyui-models", str(comfy), "--checkpoints", str(tmp_path / "ck"),
              "--transformer-quantization", "gguf", "--text-encoder-quantization", "gguf"]
    assert main(["models", *common]) == 0
    out = capsys.readouterr().out
    block = out.split("z_image:")[1].split("\nz_image_")[0]
    assert f"present  {comfy / 'unet' / 'z_image_turbo-Q4_0.gguf'}  [gguf Q4_0]" in block
    assert f"present  {comfy / 'text_encoders' / 'Qwen3-4B-Q8_0.gguf'}  [gguf Q8_0]" in block

    from app.web.handlers import AppUI  # the page's model description shows the same

    engine = Engine(Registry(families()), FileLocator(tmp_path / "ck", comfy, offline=True))
    about = AppUI(engine, output_dir=tmp_path / "out").describe("z_image")
    assert "z_image_turbo-Q4_0.gguf`) [gguf Q4_0]" in about and "Qwen3-4B-Q8_0.gguf`) [gguf Q8_0]" in about


def test_damaged_gguf_files_are_named(files, tmp_path):
    data = files["Q8_0"].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFileError, match="truncated"):
        loader.load_transformer(cut, {}, torch.float32)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04" + data[4:200])
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        loader.load_transformer(fake, {}, torch.float32)
    with pytest.raises(ModelFileError, match="no Z-Image transformer tensors"):
        loader.load_transformer(files["te"], {}, torch.float32)  # a Qwen3 GGUF offered as the transformer
    with pytest.raises(ModelFileError, match="Qwen3 text encoder"):
        loader.load_text_encoder(files["Q8_0"], torch.float32)


def test_loras_apply_to_gguf_layers(files, tmp_path, monkeypatch):
    """A LoRA on a quantized transformer (the usual GGUF user's setup) changes the image; strength 0 does not."""
    from engine.settings import lora_item
    from models.z_image.lora import linear_shapes
    from tests.lora_files import write_style

    engine = engine_for(files, "gguf_lora", URLs=files["Q4_0"])
    folder = tmp_path / "loras"
    monkeypatch.setitem(engine.lora_dirs, "z_image", folder)
    write_style(folder / "style.safetensors", linear_shapes(engine.load("gguf_lora").transformer), "kohya", seed=1)
    plain = image(engine, "gguf_lora")
    s = engine.settings_for("gguf_lora", prompt="a lighthouse at dusk", seed=3, width=256, height=256,
                            num_inference_steps=4)
    with_lora = np.asarray(engine.generate(s.__class__(**{**s.to_dict(), "loras": [lora_item("style.safetensors")]}))
                           [0].image)
    zero = np.asarray(engine.generate(s.__class__(**{**s.to_dict(), "loras": [lora_item("style.safetensors", 0.0)]}))
                      [0].image)
    assert psnr(plain, with_lora) < 40 and np.array_equal(plain, zero)
