"""LoRAs through the engine on the tiny model: images, per-step schedules, switching, the PNG record."""

import dataclasses
import hashlib

import numpy as np
import pytest

from engine.errors import SettingsError
from engine.outputs import read_png_settings
from engine.settings import lora_item
from models.z_image.lora import linear_shapes
from tests.lora_files import write_style

MODEL = "z_image_tiny_test"


@pytest.fixture
def lora_engine(engine, tmp_path, monkeypatch):
    """The session engine with a LoRA folder holding two LoRAs for the tiny model."""
    folder = tmp_path / "loras"
    monkeypatch.setitem(engine.lora_dirs, "z_image", folder)
    linears = linear_shapes(engine.load(MODEL).transformer)
    write_style(folder / "kohya.safetensors", linears, "kohya", seed=1)
    write_style(folder / "sub" / "fused.safetensors", linears, "comfyui", seed=2)
    yield engine
    engine.apply_loras(engine.settings_for(MODEL, prompt="x"))  # detach for the other tests


def image(engine, settings):
    return np.asarray(engine.generate(settings)[0].image)


def base_settings(engine, **kw):
    return engine.settings_for(MODEL, **{"prompt": "a lantern", "seed": 4, "num_inference_steps": 4, **kw})


def test_lora_changes_the_image_and_strength_zero_or_removal_does_not(lora_engine):
    s = base_settings(lora_engine)
    plain = image(lora_engine, s)
    with_lora = image(lora_engine, dataclasses.replace(s, loras=[lora_item("kohya.safetensors", 1.5)]))
    zero = image(lora_engine, dataclasses.replace(s, loras=[lora_item("kohya.safetensors", 0.0)]))
    assert np.abs(with_lora.astype(int) - plain).max() > 10
    assert np.array_equal(zero, plain)
    assert np.array_equal(image(lora_engine, s), plain)  # removed again


def test_switching_reuses_loaded_loras(lora_engine, monkeypatch):
    from models.z_image import lora as zlora

    reads = []
    real = zlora.read_lora
    monkeypatch.setattr(zlora, "read_lora", lambda *a: reads.append(a[0].name) or real(*a))
    s = base_settings(lora_engine)
    one, two = [lora_item("kohya.safetensors")], [lora_item("sub/fused.safetensors", -0.5)]
    for loras in (one, two, one + two, one, two):
        assert lora_engine.apply_loras(dataclasses.replace(s, loras=loras)) == []
        assert [a.name for a in lora_engine.model.loras.active] == [x["name"] for x in loras]
    assert sorted(reads) == ["kohya.safetensors", "sub/fused.safetensors"]


def test_schedule_sets_each_steps_strength(lora_engine):
    s = base_settings(lora_engine, num_inference_steps=6,
                      loras=[lora_item("kohya.safetensors", 0.8, "1,0.5,0"), lora_item("sub/fused.safetensors", -1)])
    model = lora_engine.load(MODEL)
    seen = []
    hook = model.transformer.register_forward_pre_hook(lambda *a: seen.append(dict(model.loras.strengths)))
    try:
        lora_engine.generate(s)
    finally:
        hook.remove()
    assert [x["kohya.safetensors"] for x in seen] == [0.8, 0.8, 0.4, 0.4, 0.0, 0.0]
    assert [x["sub/fused.safetensors"] for x in seen] == [-1.0] * 6


def test_png_records_name_file_sha256_and_strength(lora_engine, tmp_path):
    s = base_settings(lora_engine, loras=[lora_item("sub/fused.safetensors", 0.6, "1,0.5")])
    results = lora_engine.generate(s)
    (path,) = lora_engine.save(results, tmp_path / "out")
    settings, record = read_png_settings(path)
    assert settings.loras == s.loras
    data = (lora_engine.lora_dirs["z_image"] / "sub" / "fused.safetensors").read_bytes()
    assert record["loras"] == [{"name": "sub/fused.safetensors", "file": "fused.safetensors", "size": len(data),
                                "sha256": hashlib.sha256(data).hexdigest(), "strength": 0.6, "schedule": [1.0, 0.5]}]


def test_bad_names_fail_before_loading(lora_engine):
    lora_engine.unload()
    for name, words in [("missing.safetensors", "not in the LoRA folder"), ("../x.safetensors", "'..'")]:
        with pytest.raises(SettingsError, match=words):
            lora_engine.generate(base_settings(lora_engine, loras=[lora_item(name)]))
    assert lora_engine.model is None


def test_stacking_on_turbo_is_noted(lora_engine):
    two = base_settings(lora_engine, loras=[lora_item("kohya.safetensors"), lora_item("sub/fused.safetensors")])
    assert any("stacking several LoRAs" in n for n in lora_engine.check(two))
    assert not any("stacking" in n for n in lora_engine.check(dataclasses.replace(two, loras=two.loras[:1])))
