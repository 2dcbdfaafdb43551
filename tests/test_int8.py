"""INT8 (quanto) files: Wan2GP's layout loads and generates close to bf16, the app's quantizer round-trips,
the per-component choice picks the right alternative, and damaged or unsupported files are named."""

import base64
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.weights import formats
from engine.weights import quantization as Q
from engine.engine import Engine
from engine.errors import ModelFileError, UserError
from engine.weights.files import FileLocator
from engine.load_options import LoadOptions
from engine.registry import ROOT, Registry
from models import families
from engine.weights.safetensors_io import load_tensors, read_header
from models.z_image import loader
from engine.weights.assign import state_dict_for_file
from tests import layouts

TYPE = "z_image_tiny_int8"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def images(engine, **overrides):
    s = engine.settings_for(TYPE, prompt="a lighthouse at dusk", seed=3, width=256, height=256,
                            num_inference_steps=4, **overrides)
    return [np.asarray(r.image) for r in engine.generate(s)]


def make_engine(finetunes, checkpoints, **options):
    registry = Registry(families(), (ROOT / "defaults", finetunes))
    return Engine(registry, FileLocator(checkpoints, offline=True), options=LoadOptions(**options))


@pytest.fixture(scope="module")
def wan2gp_type(tmp_path_factory, tiny_model_json, tiny_models):
    """A model type listing the tiny model's bf16 files and Wan2GP-layout INT8 copies as alternatives."""
    json_path, _ = tiny_model_json
    root = tmp_path_factory.mktemp("wan2gp_int8")
    tr = layouts.write_wan2gp_int8(root / "ZImageTiny_quanto_bf16_int8.safetensors", tiny_models["transformer"])
    te = layouts.write_wan2gp_int8(root / "qwen3_quanto_bf16_int8.safetensors", tiny_models["text_encoder"],
                                   stacks=("model.layers.",))
    data = json.loads(json_path.read_text())
    data["model"]["URLs"] = [data["model"]["URLs"], str(tr)]
    data["model"]["text_encoder_URLs"] = [data["model"]["text_encoder_URLs"], str(te)]
    (root / "finetunes").mkdir()
    (root / "finetunes" / f"{TYPE}.json").write_text(json.dumps(data))
    return root / "finetunes", root, tr, te


def test_wan2gp_int8_files_load_and_generate_close_to_bf16(wan2gp_type, tiny_models):
    finetunes, root, _, _ = wan2gp_type
    bf16 = make_engine(finetunes, root / "ck", transformer_quantization="bf16", text_encoder_quantization="bf16")
    int8 = make_engine(finetunes, root / "ck", transformer_quantization="int8", text_encoder_quantization="int8")
    reference, quantized = images(bf16), images(int8)
    model = int8.model
    assert model.load_info["transformer"] == "int8" and model.load_info["text_encoder"] == "int8"
    assert bf16.model.load_info["transformer"] == "bf16"
    expected = [n for n, m in tiny_models["transformer"].named_modules()
                if isinstance(m, torch.nn.Linear) and n.startswith("layers.")]
    assert sorted(Q.int8_modules_of(model.transformer)) == sorted(expected)  # Wan2GP quantizes the main stack
    layers = model.encoder.text_encoder.config.num_hidden_layers
    assert len(Q.int8_modules_of(model.encoder.text_encoder)) == 7 * layers  # q k v o gate up down per layer
    value = psnr(reference[0], quantized[0])
    print(f"\nPSNR of the INT8 image vs the bf16 image (Wan2GP-layout files, tiny model): {value:.1f} dB")
    assert value > 30


def test_enhancer_runs_on_the_int8_encoder(wan2gp_type):
    """The enhancer writes with the INT8 encoder it conditions with: seeded, through the quantized layers."""
    finetunes, root, _, _ = wan2gp_type
    engine = make_engine(finetunes, root / "ck", transformer_quantization="int8", text_encoder_quantization="int8")
    s = engine.settings_for(TYPE, prompt="a lighthouse at dusk", seed=5)
    calls = []
    te = engine.load(TYPE).encoder.text_encoder
    first_int8 = te.get_submodule(Q.int8_modules_of(te)[0])
    handle = first_int8.register_forward_hook(lambda *a: calls.append(1))
    try:
        a, b = engine.enhance(s), engine.enhance(s)
    finally:
        handle.remove()
    assert engine.model.load_info["text_encoder"] == "int8" and calls
    assert a.prompt and a.prompt == b.prompt and a.original_prompt == "a lighthouse at dusk"


def test_unaligned_int8_data_is_realigned_and_runs_in_bf16(wan2gp_type, tiny_models):
    """mmgp's writer leaves int8 data unaligned; CPU int8 kernels crash on that, so it must be realigned."""
    _, _, tr_path, _ = wan2gp_type
    info = read_header(tr_path)
    assert any(info.offsets[k][0] % 64 for k in info.offsets if k.endswith(Q.DATA))
    model = loader.load_transformer(tr_path, {}, torch.bfloat16)
    for name in Q.int8_modules_of(model):
        weight = model.get_submodule(name).weight
        assert weight._data.data_ptr() % 64 == 0 and weight._scale.dtype == torch.bfloat16
    x, t, cap = [torch.randn(16, 1, 16, 16)], torch.tensor([0.4]), [torch.randn(9, 32)]
    with torch.no_grad():
        got = model([x[0].bfloat16()], t, [cap[0].bfloat16()], return_dict=False)[0][0].float()
        want = tiny_models["transformer"](x, t, cap, return_dict=False)[0][0]
    assert (got - want).norm() / want.norm() < 0.05


def test_fp32_scales_follow_the_compute_dtype(tmp_path, tiny_models):
    """Weights quantized from fp32 carry fp32 scales; with bf16 compute they must become bf16 (or matmuls fail)."""
    path = layouts.write_wan2gp_int8(tmp_path / "te_int8.safetensors", tiny_models["text_encoder"],
                                     stacks=("model.layers.",), scale_dtype=torch.float32)
    model = loader.load_text_encoder(path, torch.bfloat16)
    q = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert q.weight._scale.dtype == torch.bfloat16 and q.input_scale.dtype == torch.bfloat16
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        got = model.model(input_ids=ids).last_hidden_state.float()
        want = tiny_models["text_encoder"].model(input_ids=ids).last_hidden_state
    assert (got - want).norm() / want.norm() < 0.05


def test_aligned_tensors_stay_mapped_unaligned_ones_are_read_once(tmp_path):
    """Zero-copy where the kernels allow it; an unaligned tensor is read into fresh aligned memory instead."""
    a, b, c = torch.arange(64, dtype=torch.int8), torch.ones(3, dtype=torch.int8), torch.arange(128, dtype=torch.int8)
    header = {"a": {"dtype": "I8", "shape": [64], "data_offsets": [0, 64]},
              "b": {"dtype": "I8", "shape": [3], "data_offsets": [64, 67]},
              "c": {"dtype": "I8", "shape": [128], "data_offsets": [67, 195]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-(8 + len(raw)) % 64)  # data starts on a 64-byte boundary
    path = tmp_path / "mixed.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + a.numpy().tobytes() + b.numpy().tobytes()
                     + c.numpy().tobytes())
    info = read_header(path)
    tensors = load_tensors(info, aligned=["a", "c"])
    maps = [line.split()[0].split("-") for line in open("/proc/self/maps") if str(path) in line]
    mapped = lambda t: any(int(lo, 16) <= t.data_ptr() < int(hi, 16) for lo, hi in maps)  # noqa: E731
    assert mapped(tensors["a"]) and not mapped(tensors["c"])
    assert tensors["c"].data_ptr() % 64 == 0
    assert torch.equal(tensors["a"], a) and torch.equal(tensors["b"], b) and torch.equal(tensors["c"], c)


@pytest.fixture()
def bf16_type(tmp_path, tiny_model_json):
    json_path, _ = tiny_model_json
    finetunes = tmp_path / "finetunes"
    finetunes.mkdir()
    data = json.loads(json_path.read_text())
    (finetunes / f"{TYPE}.json").write_text(json.dumps(data))
    return finetunes, tmp_path / "ck"


def test_quantize_writes_wan2gp_format_and_round_trips(bf16_type, tiny_models):
    from engine.finetunes import add_alternative

    finetunes, ck = bf16_type
    engine = make_engine(finetunes, ck)
    model_def, handler = engine.registry.get(TYPE), engine.registry.handler(TYPE)
    done = handler.quantize(model_def, engine.locator, ["transformer", "text_encoder"], ck)
    assert [d.written for d in done] == [True, True]
    tr = done[0].path
    assert tr.name == "transformer_quanto_bf16_int8.safetensors" and tr.parent == ck
    info = read_header(tr)
    qmap = Q.quantization_map(info.metadata)
    assert info.metadata["quantization_format"] == "quanto"
    assert set(qmap) == set(Q.block_linears(tiny_models["transformer"]))
    assert all(v == {"weights": "qint8", "activations": "none"} for v in qmap.values())
    assert {"noise_refiner.0.attention.to_q", "layers.1.feed_forward.w2"} <= set(qmap)
    config = json.loads(base64.b64decode(info.metadata["config_base64"]))
    assert config["dim"] == tiny_models["transformer"].config.dim

    loaded = loader.load_transformer(tr, {}, torch.float32)
    original = {k: v.bfloat16().float() for k, v in tiny_models["transformer"].state_dict().items()}
    for name in qmap:  # each weight within half a quantization step of the bf16 weight
        w = loaded.get_submodule(name).weight
        scale = w._scale.float()
        assert (w._data.float() * scale - original[f"{name}.weight"]).abs().le(scale * 0.5 + 1e-6).all(), name
    assert type(loaded.all_x_embedder["2-1"]) is torch.nn.Linear  # embedders stay bf16
    torch.testing.assert_close(loaded.all_x_embedder["2-1"].weight, original["all_x_embedder.2-1.weight"])

    for d in done:
        add_alternative(finetunes, model_def, d.field, d.path, engine.locator)
    engine = make_engine(finetunes, ck, transformer_quantization="int8", text_encoder_quantization="int8")
    model_def = engine.registry.get(TYPE)
    assert handler.quantization_choices(model_def, engine.locator) == {"transformer": ["bf16", "int8"],
                                                                        "text_encoder": ["bf16", "int8"]}
    images(engine)
    assert engine.model.files["transformer"] == str(tr) and engine.model.load_info["text_encoder"] == "int8"
    again = handler.quantize(model_def, engine.locator, ["transformer"], ck)
    assert not again[0].written  # kept, not rewritten
    assert add_alternative(finetunes, model_def, "URLs", tr, engine.locator) is None  # already listed


def test_cli_quantize_then_generate_int8_on_cpu(bf16_type, tmp_path, capsys, monkeypatch):
    """The CPU path end to end: a profile is asked for, none is applied (mmgp is never imported), the
    user is told once, and the memory report reaches the terminal and the PNG."""
    from engine.placement import offload
    from app.cli import main
    from engine.outputs import read_png_settings

    def no_mmgp():
        raise AssertionError("mmgp must not be used without CUDA")

    monkeypatch.setattr(offload, "import_mmgp", no_mmgp)
    finetunes, ck = bf16_type
    common = ["--finetunes", str(finetunes), "--checkpoints", str(ck)]
    assert main(["quantize", "--model", TYPE, *common]) == 0
    out = capsys.readouterr().out
    assert "transformer: wrote" in out and "text_encoder: wrote" in out and str(finetunes / f"{TYPE}.json") in out
    assert main(["generate", "--model", TYPE, *common, "--transformer-quantization", "int8",
                 "--text-encoder-quantization", "int8", "--profile", "4", "--prompt", "a test", "--seed", "9",
                 "--steps", "2", "--output", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("no CUDA GPU") == 1 and "--profile ignored" in captured.err
    memory_line = [line for line in captured.err.splitlines() if line.startswith("peak memory:")]
    assert len(memory_line) == 1 and all(s in memory_line[0] for s in ("text encoding", "denoising", "decoding"))
    png = captured.out.split("\t")[0]
    _, record = read_png_settings(png)
    assert record["load"] == {"transformer": "int8", "text_encoder": "int8", "profile": None, "attention": "sdpa"}
    assert record["memory"]["denoising"]["peak_ram_bytes"] > 0
    assert "transformer_quanto_bf16_int8.safetensors" in record["files"]["transformer"]


def test_asking_for_a_kind_the_model_does_not_list(bf16_type):
    finetunes, ck = bf16_type
    engine = make_engine(finetunes, ck, transformer_quantization="int8")
    with pytest.raises(UserError, match="no INT8 file for its transformer.*quantize --model " + TYPE):
        engine.load(TYPE)


def test_kind_from_header_when_the_name_says_nothing(wan2gp_type, tmp_path):
    _, _, tr, _ = wan2gp_type
    renamed = tmp_path / "my_model.safetensors"
    renamed.write_bytes(tr.read_bytes())
    assert formats.kind_of(renamed.name, renamed) == "int8"
    assert formats.kind_of("ZImageTurbo_quanto_bf16_int8.safetensors") == "int8"
    assert formats.kind_of("ZImageTurbo_bf16.safetensors") == "bf16"
    assert Q.int8_file_name("ZImageTurbo_bf16.safetensors") == "ZImageTurbo_quanto_bf16_int8.safetensors"


def _quantized_sd(model, stacks):
    out = {}
    for name, t in state_dict_for_file(model).items():
        module = name[: -len(".weight")]
        if name.endswith(".weight") and name.startswith(stacks) and t.dim() == 2:
            out[f"{module}.weight._data"], out[f"{module}.weight._scale"] = layouts.quantize_rows(t)
        else:
            out[name] = t
    return out


def test_damaged_or_unsupported_int8_files_are_named(tmp_path, tiny_models):
    sd = _quantized_sd(tiny_models["transformer"], ("layers.",))
    broken = dict(sd)
    del broken["layers.1.attention.to_k.weight._scale"]
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ModelFileError, match=r"layers\.1\.attention\.to_k\.weight\._scale is missing"):
        loader.load_transformer(tmp_path / "broken.safetensors", {}, torch.float32)

    meta = {"quantization_format": "quanto", "quantization_map_base64": base64.b64encode(json.dumps(
        {"layers.0.attention.to_q": {"weights": "qint4", "activations": "none"}}).encode()).decode()}
    save_file(sd, str(tmp_path / "q4.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="qint4.*only quanto INT8"):
        loader.load_transformer(tmp_path / "q4.safetensors", {}, torch.float32)

    incomplete = dict(sd)
    del incomplete["layers.1.feed_forward.w2.weight._data"], incomplete["layers.1.feed_forward.w2.weight._scale"]
    save_file(incomplete, str(tmp_path / "incomplete.safetensors"))
    with pytest.raises(ModelFileError, match=r"missing \(layers\.1\.feed_forward\.w2\.weight\)"):
        loader.load_transformer(tmp_path / "incomplete.safetensors", {}, torch.float32)

    te = _quantized_sd(tiny_models["text_encoder"], ("model.",))  # the embedding too: not a Linear
    save_file(te, str(tmp_path / "te.safetensors"))
    with pytest.raises(ModelFileError, match="model.embed_tokens is INT8 in the file but is a Embedding"):
        loader.load_text_encoder(tmp_path / "te.safetensors", torch.float32)


def test_fused_qkv_int8_file_splits_rows_and_scales(tmp_path, tiny_models):
    """An original-names (fused qkv) INT8 file: per-row scales split with their rows, so nothing is lost."""
    sd = layouts.to_original_keys(state_dict_for_file(tiny_models["transformer"]))
    qsd = {}
    for name, t in sd.items():
        if name.startswith("layers.") and name.endswith(".weight") and t.dim() == 2:
            qsd[name + "._data"], qsd[name + "._scale"] = layouts.quantize_rows(t)
            qsd[name[: -len("weight")] + "input_scale"] = torch.ones(())
        else:
            qsd[name] = t
    save_file(qsd, str(tmp_path / "orig_int8.safetensors"))
    model = loader.load_transformer(tmp_path / "orig_int8.safetensors", {}, torch.float32)
    fused = qsd["layers.0.attention.qkv.weight._data"]
    dim = model.config.dim
    k = model.get_submodule("layers.0.attention.to_k").weight
    assert torch.equal(k._data, fused[dim: 2 * dim])
    assert torch.equal(k._scale, qsd["layers.0.attention.qkv.weight._scale"][dim: 2 * dim].float())


def test_new_alternative_keeps_the_file_in_use_first(tmp_path):
    """A text encoder taken from an all-in-one checkpoint (no list in the JSON) stays the default after quantize."""
    from engine.finetunes import add_alternative
    from engine.registry import ModelDef

    aio, int8 = tmp_path / "aio.safetensors", tmp_path / "te_quanto_bf16_int8.safetensors"
    aio.write_bytes(b"x")
    int8.write_bytes(b"x")
    model_def = ModelDef("mine", {"architecture": "z_image", "URLs": str(aio)}, sources=[str(tmp_path / "mine.json")])
    written = add_alternative(tmp_path / "ft", model_def, "text_encoder_URLs", int8, FileLocator(tmp_path), aio)
    data = json.loads(written.read_text())
    assert data["model"]["text_encoder_URLs"] == [str(aio.resolve()), str(int8.resolve())]
