"""Finding users' own files (checkpoints, ComfyUI folders, diffusers repos, all-in-one) and downloading."""

import json

import pytest

from engine.errors import DownloadError, ModelDefinitionError
from engine.weights.files import FileLocator, parse_ref
from engine.registry import ROOT, Registry
from models import families
from tests import layouts


def test_parse_refs():
    f = parse_ref("https://huggingface.co/DeepBeepMeep/Z-Image/resolve/main/Qwen3/qwen3_bf16.safetensors")
    assert (f.repo, f.path, f.revision, f.folder) == ("DeepBeepMeep/Z-Image", "Qwen3/qwen3_bf16.safetensors",
                                                      "main", False)
    d = parse_ref("https://huggingface.co/DeepBeepMeep/Z-Image/tree/main/Qwen3")
    assert d.folder and d.path == "Qwen3"
    assert not parse_ref("/models/z.safetensors").is_hub
    with pytest.raises(ModelDefinitionError):
        parse_ref("https://example.com/file.safetensors")


def test_comfyui_folder_used_in_place(tmp_path, tiny_models, tiny_tokenizer):
    comfy = layouts.write_comfyui(tmp_path / "comfy", tiny_models)
    ckpts = tmp_path / "ckpts"
    tiny_tokenizer.save_pretrained(str(ckpts / "Qwen3"))  # tokenizer where the default JSON expects it
    reg = Registry(families())
    status = {s.component: s.path for s in reg.handler("z_image").file_status(
        reg.get("z_image"), FileLocator(ckpts, comfy, offline=True))}
    assert status["transformer"] == comfy / "diffusion_models/z_image_turbo_bf16.safetensors"
    assert status["text_encoder"] == comfy / "text_encoders/qwen_3_4b.safetensors"
    assert status["vae"] == comfy / "vae/ae.safetensors"
    assert status["tokenizer"] == ckpts / "Qwen3"


def test_checkpoints_folder_like_wan2gp(tmp_path):
    ckpts = tmp_path / "ckpts"
    (ckpts / "Qwen3").mkdir(parents=True)
    (ckpts / "ZImageTurbo_bf16.safetensors").write_bytes(b"x")
    (ckpts / "Qwen3" / "qwen3_bf16.safetensors").write_bytes(b"x")
    (ckpts / "Qwen3" / "tokenizer_config.json").write_text("{}")
    reg = Registry(families())
    status = {s.component: s.path for s in reg.handler("z_image").file_status(reg.get("z_image"),
                                                                              FileLocator(ckpts, offline=True))}
    assert status["transformer"] == ckpts / "ZImageTurbo_bf16.safetensors"
    assert status["text_encoder"] == ckpts / "Qwen3" / "qwen3_bf16.safetensors"
    assert status["tokenizer"] == ckpts / "Qwen3"
    assert status["vae"] is None


def test_model_json_pointing_at_diffusers_repo(tmp_path, tiny_models, tiny_tokenizer, engine):
    repo = layouts.write_diffusers_repo(tmp_path / "Z-Image-Turbo", tiny_models, tiny_tokenizer)
    path = tmp_path / "from_repo.json"
    path.write_text(json.dumps({"model": {"architecture": "z_image", "URLs": str(repo)}, "resolution": "256x256"}))
    reg = Registry(families(), folders=[ROOT / "defaults"], extra_files=[path])
    status = {s.component: s.path for s in reg.handler("from_repo").file_status(reg.get("from_repo"),
                                                                                FileLocator(offline=True))}
    assert status == {"transformer": repo / "transformer", "text_encoder": repo / "text_encoder",
                      "vae": repo / "vae", "tokenizer": repo / "tokenizer"}


def test_all_in_one_file_serves_every_component(tmp_path, tiny_models, tiny_tokenizer):
    import numpy as np

    from engine.engine import Engine

    aio = layouts.write_all_in_one(tmp_path / "aio.safetensors", tiny_models)
    tiny_tokenizer.save_pretrained(str(tmp_path / "tok"))
    path = tmp_path / "aio_type.json"
    path.write_text(json.dumps({"model": {"architecture": "z_image", "URLs": str(aio),
                                          "tokenizer": str(tmp_path / "tok")}, "resolution": "256x256"}))
    eng = Engine(Registry(families(), folders=[], extra_files=[path]), FileLocator(offline=True))
    s = eng.settings_for("aio_type", prompt="x", seed=1, num_inference_steps=2)
    img = np.asarray(eng.generate(s)[0].image)
    assert img.shape == (256, 256, 3)
    assert eng.model.files["text_encoder"] == str(aio) and eng.model.files["vae"] == str(aio)


def test_download_calls_hub_into_checkpoints(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo, filename, revision, local_dir):
        calls.append((repo, filename, revision, local_dir))
        target = local_dir / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    ref = parse_ref("https://huggingface.co/DeepBeepMeep/Z-Image/resolve/main/Qwen3/qwen3_bf16.safetensors")
    loc = FileLocator(tmp_path / "ckpts")
    path = loc.download(ref)
    assert calls == [("DeepBeepMeep/Z-Image", "Qwen3/qwen3_bf16.safetensors", "main", tmp_path / "ckpts")]
    assert path == tmp_path / "ckpts" / "Qwen3" / "qwen3_bf16.safetensors"
    assert loc.local_path(ref) == path  # found next time, no second download


def test_offline_download_says_what_and_where(tmp_path):
    ref = parse_ref("https://huggingface.co/DeepBeepMeep/Z-Image/resolve/main/ZImageTurbo_bf16.safetensors")
    with pytest.raises(DownloadError) as err:
        FileLocator(tmp_path / "ckpts", offline=True).download(ref, size=12_310_000_000)
    text = str(err.value)
    assert "ZImageTurbo_bf16.safetensors" in text and "12.3 GB" in text and str(tmp_path / "ckpts") in text


def test_missing_local_file_named(tmp_path, engine):
    from engine.engine import Engine
    from engine.errors import UserError

    path = tmp_path / "gone.json"
    path.write_text(json.dumps({"model": {"architecture": "z_image", "URLs": str(tmp_path / "nope.safetensors"),
                                          "text_encoder_URLs": "z_image", "vae_URLs": "z_image",
                                          "tokenizer": "z_image"}}))
    eng = Engine(Registry(families(), extra_files=[path]), FileLocator(tmp_path / "ck", offline=True))
    with pytest.raises(UserError, match="nope.safetensors"):
        eng.generate(eng.settings_for("gone", prompt="x"))
