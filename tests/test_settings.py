"""Settings validation: every bad value gets a message that says what and why."""

import dataclasses

import pytest

from engine.errors import SettingsError
from engine.settings import GenerationSettings, parse_resolution, size_presets


def ok(**kw):
    return GenerationSettings(model_type="z_image", prompt="a cat", **kw)


@pytest.mark.parametrize("kw,message", [
    (dict(width=1000), "multiple of 16.*992 or 1008"),
    (dict(height=128), "out of range"),
    (dict(width=8192), "out of range"),
    (dict(num_inference_steps=0), "steps 0 is out of range"),
    (dict(num_inference_steps=201), "steps 201"),
    (dict(guidance_scale=-1.0), "guidance -1.0 is out of range"),
    (dict(guidance_scale=float("nan")), "guidance must be a number"),
    (dict(seed=-5), "seed"),
    (dict(batch_size=0), "batch size"),
    (dict(count=1000), "image count"),
    (dict(width="512"), "whole number"),
    (dict(cfg_truncation=2.0), "CFG truncation"),
    (dict(flow_shift=0.0), "shift"),
])
def test_bad_values(kw, message):
    with pytest.raises(SettingsError, match=message):
        ok(**kw).validate()


def test_empty_prompt():
    with pytest.raises(SettingsError, match="prompt is empty"):
        dataclasses.replace(ok(), prompt="   ").validate()


def test_good_values_pass():
    ok(width=256, height=4096, num_inference_steps=200, seed=0).validate()


def test_round_trip_and_unknown_keys():
    s = ok(seed=3, loras=[{"name": "a.safetensors", "strength": 0.5}])
    assert GenerationSettings.from_dict(s.to_dict()) == s
    with pytest.raises(SettingsError, match="unknown setting.*colour"):
        GenerationSettings.from_dict({**s.to_dict(), "colour": "red"})
    assert GenerationSettings.from_dict({"model_type": "z", "prompt": "p", "resolution": "512x768"}).height == 768


def test_presets_are_valid_sizes():
    for mp in (1.0, 2.0):
        for ratio, (w, h) in size_presets(mp).items():
            ok(width=w, height=h).validate()
            a, b = (int(x) for x in ratio.split(":"))
            assert abs(w / h - a / b) < 0.05
            assert abs(w * h / 2**20 - mp) < 0.15 * mp
    assert size_presets(1.0)["1:1"] == (1024, 1024)
    with pytest.raises(SettingsError):
        parse_resolution("1024")


def test_random_seed_resolved():
    s = ok(seed=-1).with_seed()
    assert 0 <= s.seed < 2**32
    assert ok(seed=5).with_seed().seed == 5
