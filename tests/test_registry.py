"""Model types from JSON: shipped defaults, finetune overrides, references, and bad definitions."""

import json

import pytest

from engine.errors import ModelDefinitionError
from engine.registry import ROOT, Registry
from models import families

SHIPPED = ["z_image", "z_image_base", "z_image_control", "z_image_control2", "z_image_control2_1",
           "z_image_twinflow_turbo"]


def write(folder, name, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data))


def test_shipped_types_and_defaults():
    reg = Registry(families())
    assert set(SHIPPED) <= set(reg.types)
    turbo = reg.default_settings("z_image")
    assert (turbo.num_inference_steps, turbo.guidance_scale, turbo.flow_shift) == (8, 0.0, 3.0)
    base = reg.default_settings("z_image_base")
    assert base.guidance_scale > 0 and base.num_inference_steps >= 28
    assert reg.handler("z_image_base").capabilities("z_image_base").cfg
    assert not reg.handler("z_image").capabilities("z_image").cfg
    assert reg.default_settings("z_image_twinflow_turbo").num_inference_steps == 2
    assert reg.handler("z_image_control2").capabilities("z_image_control2").inpaint


def test_reference_to_another_type_reuses_files():
    reg = Registry(families())
    assert reg.get("z_image_control").model["URLs"] == reg.get("z_image").model["URLs"]
    assert reg.get("z_image_base").model["text_encoder_URLs"] == reg.get("z_image").model["text_encoder_URLs"]


def test_finetune_overrides_field_by_field(tmp_path):
    write(tmp_path / "fin", "z_image", {"model": {"name": "My Turbo"}, "num_inference_steps": 6})
    write(tmp_path / "fin", "my_type", {"model": {"architecture": "z_image", "URLs": "/x/t.safetensors",
                                                  "text_encoder_URLs": "z_image", "vae_URLs": "z_image",
                                                  "tokenizer": "z_image"}})
    reg = Registry(families(), folders=[ROOT / "defaults", tmp_path / "fin"])
    turbo = reg.get("z_image")
    assert turbo.name == "My Turbo"
    assert turbo.model["URLs"] == Registry(families()).get("z_image").model["URLs"]  # untouched fields kept
    assert reg.default_settings("z_image").num_inference_steps == 6
    assert reg.default_settings("z_image").guidance_scale == 0.0
    assert reg.get("my_type").model["vae_URLs"] == turbo.model["vae_URLs"]


@pytest.mark.parametrize("data,message", [
    ({"model": {"architecture": "z_image", "URLs": 3}}, "\"URLs\" must be a file"),
    ({"model": {"architecture": "sdxl"}}, "architecture 'sdxl'"),
    ({"notmodel": {}}, "\"model\" block"),
    ({"model": {"architecture": "z_image"}, "num_inference_steps": "eight"}, "steps must be a whole number"),
    ({"model": {"architecture": "z_image", "attention": {"old gpus": "sdpa"}}}, "GPU generation test"),
    ({"model": {"architecture": "z_image_control", "modules": [["a.safetensors"], ["b.safetensors"]]}},
     "lists 2 modules"),
    ({"model": {"architecture": "z_image"}, "resolution": "big"}, "WIDTHxHEIGHT"),
    ({"model": {"architecture": "z_image", "config": [1]}}, "must be an object"),
])
def test_bad_model_json(tmp_path, data, message):
    write(tmp_path, "bad", data)
    with pytest.raises(ModelDefinitionError, match=message):
        Registry(families(), folders=[tmp_path])


def test_invalid_json_and_loops(tmp_path):
    (tmp_path / "broken.json").write_text("{ not json")
    with pytest.raises(ModelDefinitionError, match="not valid JSON"):
        Registry(families(), folders=[tmp_path])
    (tmp_path / "broken.json").unlink()
    write(tmp_path, "a", {"model": {"architecture": "z_image", "URLs": "b"}})
    write(tmp_path, "b", {"model": {"architecture": "z_image", "URLs": "a"}})
    with pytest.raises(ModelDefinitionError, match="loop"):
        Registry(families(), folders=[tmp_path])


def test_unknown_type():
    with pytest.raises(ModelDefinitionError, match="unknown model type 'nope'.*z_image"):
        Registry(families()).get("nope")


def test_fields_with_no_meaning_here_are_accepted_and_listed_once(tmp_path, caplog):
    """Only a broken JSON is refused: unknown fields (Wan2GP's UI hints, a misspelling) are kept aside as notes,
    with the likely intended name."""
    write(tmp_path, "mine", {"model": {"architecture": "z_image", "URLz": "x", "visible": False,
                                       "URLs": "/x/t.safetensors"},
                             "num_inference_step": 3, "image_mode": 1})
    with caplog.at_level("WARNING", logger="zimage.registry"):
        reg = Registry(families(), folders=[ROOT / "defaults", tmp_path])
    notes = reg.get("mine").ignored
    assert len(notes) == 2 and "URLz (did you mean URLs?)" in notes[0] and "visible" in notes[0]
    assert "num_inference_step (did you mean num_inference_steps?)" in notes[1] and "image_mode" in notes[1]
    assert sum("URLz" in r.message for r in caplog.records) == 1
    assert "URLz" not in reg.get("mine").model and reg.default_settings("mine").num_inference_steps == 8
