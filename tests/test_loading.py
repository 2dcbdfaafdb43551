"""Every file layout users have loads to the same weights; broken or foreign files give one clear message."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.errors import ModelFileError
from models.z_image import loader
from engine.weights.assign import state_dict_for_file
from tests import layouts


def assert_same_weights(loaded, reference):
    want = reference.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k].float(), want[k].float(), rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("prefix,junk", [("", False), ("model.diffusion_model.", True), ("diffusion_model.", False)])
def test_comfyui_split_files(tmp_path, tiny_models, prefix, junk):
    root = layouts.write_comfyui(tmp_path, tiny_models, prefix, junk)
    tr = loader.load_transformer(root / "diffusion_models/z_image_turbo_bf16.safetensors", {}, torch.float32)
    assert_same_weights(tr, tiny_models["transformer"])
    te = loader.load_text_encoder(root / "text_encoders/qwen_3_4b.safetensors", torch.float32)
    assert_same_weights(te, tiny_models["text_encoder"])
    assert te.lm_head.weight.data_ptr() == te.model.embed_tokens.weight.data_ptr()  # tied, not a copy
    vae = loader.load_vae(root / "vae/ae.safetensors", torch.float32)
    assert_same_weights(vae, tiny_models["vae"])


def test_diffusers_repo_folder(tmp_path, tiny_models, tiny_tokenizer):
    repo = layouts.write_diffusers_repo(tmp_path / "repo", tiny_models, tiny_tokenizer)
    assert_same_weights(loader.load_transformer(repo / "transformer", {}, torch.float32), tiny_models["transformer"])
    assert_same_weights(loader.load_text_encoder(repo / "text_encoder", torch.float32), tiny_models["text_encoder"])
    assert_same_weights(loader.load_vae(repo / "vae", torch.float32), tiny_models["vae"])
    assert loader.load_tokenizer(repo / "tokenizer").chat_template


def test_wan2gp_file_with_header_config(tmp_path, tiny_models):
    path = layouts.write_wan2gp(tmp_path / "ZImageTurbo_bf16.safetensors", tiny_models["transformer"])
    assert_same_weights(loader.load_transformer(path, {}, torch.float32), tiny_models["transformer"])


def test_all_in_one_checkpoint(tmp_path, tiny_models):
    path = layouts.write_all_in_one(tmp_path / "aio.safetensors", tiny_models)
    assert_same_weights(loader.load_transformer(path, {}, torch.float32), tiny_models["transformer"])
    assert_same_weights(loader.load_text_encoder(path, torch.float32), tiny_models["text_encoder"])
    assert_same_weights(loader.load_vae(path, torch.float32), tiny_models["vae"])


def test_bf16_file_cast_to_compute_dtype(tmp_path, tiny_models):
    sd = {k: v.to(torch.bfloat16) for k, v in state_dict_for_file(tiny_models["transformer"]).items()}
    save_file(sd, str(tmp_path / "t.safetensors"))
    tr = loader.load_transformer(tmp_path / "t.safetensors", {}, torch.float32)
    assert tr.dtype == torch.float32
    ref = tiny_models["transformer"].state_dict()["layers.0.attention.to_q.weight"]
    torch.testing.assert_close(tr.state_dict()["layers.0.attention.to_q.weight"], ref.bfloat16().float())


def test_weights_are_memory_mapped_not_copied(tmp_path, tiny_models):
    path = tmp_path / "t.safetensors"
    save_file(state_dict_for_file(tiny_models["transformer"]), str(path))
    tr = loader.load_transformer(path, {}, torch.float32)
    maps = [line.split() for line in open("/proc/self/maps") if str(path) in line]
    ranges = [tuple(int(x, 16) for x in m[0].split("-")) for m in maps]
    ptr = tr.layers[0].attention.to_q.weight.data_ptr()
    assert any(lo <= ptr < hi for lo, hi in ranges)


def test_twinflow_second_embedder_is_loaded(tmp_path):
    from models.z_image.tiny import make_transformer

    model = make_transformer(twinflow=True)
    save_file(state_dict_for_file(model), str(tmp_path / "tw.safetensors"))
    tr = loader.load_transformer(tmp_path / "tw.safetensors", {}, torch.float32)
    torch.testing.assert_close(tr.t_embedder_2.mlp[0].weight, model.t_embedder_2.mlp[0].weight)


def test_json_config_overrides(tmp_path, tiny_models):
    path = tmp_path / "t.safetensors"
    save_file(state_dict_for_file(tiny_models["transformer"]), str(path))
    assert loader.load_transformer(path, {"rope_theta": 10.0}, torch.float32).config.rope_theta == 10.0
    with pytest.raises(ModelFileError, match="unknown field"):
        loader.load_transformer(path, {"nonsense": 1}, torch.float32)


# ---- bad files ---------------------------------------------------------------------------------

def test_truncated_file(tmp_path, tiny_models):
    path = tmp_path / "t.safetensors"
    save_file(state_dict_for_file(tiny_models["transformer"]), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFileError, match="truncated"):
        loader.load_transformer(path, {}, torch.float32)


def test_garbage_file(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ModelFileError, match="corrupt"):
        loader.load_transformer(path, {}, torch.float32)
    path.write_bytes(b"hello")
    with pytest.raises(ModelFileError, match="not a safetensors"):
        loader.load_vae(path, torch.float32)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_files_refused_unopened(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04 this would be a pickle")
    with pytest.raises(ModelFileError, match="pickle"):
        loader.load_transformer(path, {}, torch.float32)


def test_missing_tensors_named(tmp_path, tiny_models):
    sd = state_dict_for_file(tiny_models["transformer"])
    sd.pop("layers.1.feed_forward.w2.weight")
    save_file(sd, str(tmp_path / "t.safetensors"))
    with pytest.raises(ModelFileError, match=r"missing \(layers.1.feed_forward.w2.weight\)"):
        loader.load_transformer(tmp_path / "t.safetensors", {}, torch.float32)


@pytest.mark.parametrize("key,family", [
    ("double_blocks.0.img_attn.qkv.weight", "Flux"),
    ("model.diffusion_model.input_blocks.0.0.weight", "Stable Diffusion"),
    ("blocks.0.self_attn.q.weight", "Wan"),
    ("layers.0.attention.to_q.lora_A.weight", "LoRA"),
])
def test_foreign_family_named(tmp_path, key, family):
    save_file({key: torch.zeros(2, 2)}, str(tmp_path / "f.safetensors"))
    with pytest.raises(ModelFileError, match=family):
        loader.load_transformer(tmp_path / "f.safetensors", {}, torch.float32)


@pytest.mark.parametrize("key,words", [("layers.0.attention.qweight", "Nunchaku SVDQ"),
                                       ("scaled_fp8", "no Z-Image transformer tensors")])
def test_unsupported_quantized_formats_named(tmp_path, key, words):  # INT8, fp8, GGUF load: test_int8, test_formats
    save_file({key: torch.zeros(2, 2)}, str(tmp_path / "q.safetensors"))
    with pytest.raises(ModelFileError, match=words):
        loader.load_transformer(tmp_path / "q.safetensors", {}, torch.float32)


def test_wrong_component_named(tmp_path, tiny_models):
    path = tmp_path / "vae.safetensors"
    save_file(state_dict_for_file(tiny_models["vae"]), str(path))
    with pytest.raises(ModelFileError, match="holds a vae, not a Z-Image transformer"):
        loader.load_transformer(path, {}, torch.float32)


def test_folder_with_only_pickles(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    (tmp_path / "config.json").write_text(json.dumps({}))
    with pytest.raises(ModelFileError, match="pickle"):
        loader.load_text_encoder(tmp_path, torch.float32)


def test_plain_fp8_file_stays_fp8(tmp_path, tiny_models):
    """Linear weights stay float8 in memory (cast per layer when used); norms and embeddings are cast on load."""
    sd = {k: v.to(torch.float8_e4m3fn) for k, v in state_dict_for_file(tiny_models["transformer"]).items()}
    save_file(sd, str(tmp_path / "fp8.safetensors"))
    tr = loader.load_transformer(tmp_path / "fp8.safetensors", {}, torch.float32)
    w1 = tr.layers[0].feed_forward.w1
    assert w1.weight.dtype == torch.float8_e4m3fn and tr.layers[0].ffn_norm1.weight.dtype == torch.float32
    x = torch.randn(3, w1.in_features)
    torch.testing.assert_close(w1(x), x @ sd["layers.0.feed_forward.w1.weight"].float().t())


def test_each_header_is_read_once_per_load(tmp_path):
    """Choosing file kinds, finding components and loading all ask for headers: each file is parsed once."""
    from collections import Counter

    from engine.engine import Engine
    from engine.registry import Registry
    from engine.weights import safetensors_io
    from engine.weights.files import FileLocator
    from models import families
    from models.z_image.tiny import write_test_model

    model_json = write_test_model(tmp_path)
    parsed = Counter()
    original = safetensors_io.read_header

    def counting(path):
        parsed[Path(path).name] += 1
        return original(path)

    safetensors_io._open_weights.cache_clear()
    safetensors_io.read_header = counting
    try:
        engine = Engine(Registry(families(), extra_files=[model_json]), FileLocator(offline=True))
        engine.load(model_json.stem)
    finally:
        safetensors_io.read_header = original
    assert set(parsed) == {"transformer.safetensors", "text_encoder.safetensors", "vae.safetensors"}
    assert set(parsed.values()) == {1}
