"""Positive-branch-only LoRAs: in CFG's batched pass the LoRA acts on the positive rows only, so the negative
prediction is bit for bit what it is without the LoRA; the option travels through settings, CLI and PNG."""

import dataclasses

import numpy as np
import pytest
import torch

from engine.errors import SettingsError
from engine.lora.apply import LoraStack, cfg_batch
from engine.lora.library import LoraLibrary
from engine.outputs import read_png_settings
from engine.settings import GenerationSettings, lora_branch, lora_item, normalize_loras, parse_lora_arg
from models.z_image.lora import cfg_rows, linear_shapes, read_lora
from tests.lora_files import write_style

MODEL = "z_image_tiny_test"


def test_settings_keep_the_option_only_when_on():
    assert lora_item("a.safetensors") == {"name": "a.safetensors", "strength": 1.0, "schedule": None}
    assert lora_item("a.safetensors", positive_only=True)["positive_only"] is True
    assert normalize_loras([{"name": "a.safetensors", "positive_only": False}])[0].get("positive_only") is None
    with pytest.raises(SettingsError, match="positive_only of LoRA 'a.safetensors' must be true or false"):
        normalize_loras([{"name": "a.safetensors", "positive_only": "yes"}])
    s = GenerationSettings.from_dict({"model_type": "z_image", "prompt": "x",
                                      "loras": [{"name": "a.safetensors", "positive_only": True}]}).validate()
    assert s.loras == [{"name": "a.safetensors", "strength": 1.0, "schedule": None, "positive_only": True}]


def test_command_line_suffix():
    assert parse_lora_arg("a.safetensors:0.5:positive") == {"name": "a.safetensors", "strength": 0.5,
                                                            "schedule": None, "positive_only": True}
    assert parse_lora_arg("s/a.safetensors:1,0.5:positive")["schedule"] == [1.0, 0.5]
    assert parse_lora_arg("a.safetensors:positive")["positive_only"] is True
    assert "positive_only" not in parse_lora_arg("a.safetensors:both")
    assert [lora_branch(t) for t in ("a.safetensors:positive", "a.safetensors:0.5:both", "a.safetensors:0.5",
                                     "positive")] == [True, False, None, None]


@pytest.fixture(scope="module")
def transformer(tiny_models):
    return tiny_models["transformer"]


def batched_pass(transformer, x, cond, uncond, stack=None):
    """One CFG pass as the pipeline runs it: [x, x] with captions cond + uncond, positive-only rows set."""
    rows = cfg_rows(type("M", (), {"transformer": transformer})(), x, cond, uncond)
    with torch.no_grad(), cfg_batch(stack, rows):
        out = transformer(list(torch.cat([x, x]).unsqueeze(2).unbind(0)), torch.tensor([0.4] * 2 * len(x)),
                          cond + [uncond] * len(x), return_dict=False)[0]
    return torch.stack(out)


@pytest.mark.parametrize("style", ["peft", "comfyui"])  # block layers only / also the embedders and fused qkv
def test_negative_rows_stay_bit_identical(style, transformer, tmp_path):
    linears = linear_shapes(transformer)
    write_style(tmp_path / "l.safetensors", linears, style, seed=4)
    lora = read_lora(LoraLibrary(tmp_path).resolve("l.safetensors"), linears, torch.float32, "cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 8, 8, generator=gen)
    cond = [torch.randn(7, 32, generator=gen), torch.randn(40, 32, generator=gen)]  # unequal caption lengths
    uncond = torch.randn(3, 32, generator=gen)
    plain = batched_pass(transformer, x, cond, uncond)
    stack = LoraStack(transformer)
    stack.activate([lora])
    try:
        both = batched_pass(transformer, x, cond, uncond, stack)
        stack.positive_only = {lora.name}
        positive_only = batched_pass(transformer, x, cond, uncond, stack)
        with torch.no_grad():  # the positive samples alone, LoRA everywhere: what their rows must show
            alone = torch.stack(transformer(list(x.unsqueeze(2).unbind(0)), torch.tensor([0.4, 0.4]), cond,
                                            return_dict=False)[0])
    finally:
        stack.clear()
    assert (both[2:] - plain[2:]).abs().max() > 1e-3  # without the option the LoRA reaches the negative
    assert torch.equal(positive_only[2:], plain[2:])  # the negative branch, bit for bit
    assert (positive_only[:2] - plain[:2]).abs().max() > 1e-3
    torch.testing.assert_close(positive_only[:2], alone, rtol=1e-4, atol=1e-5)


def test_rows_of_each_layer_kind(transformer):
    model = type("M", (), {"transformer": transformer})()
    x = torch.zeros(3, 16, 10, 12)  # 5x6 = 30 image tokens, padded to 32
    rows = cfg_rows(model, x, [torch.zeros(7, 32)] * 3, torch.zeros(40, 32))
    assert rows == {6: 3, 6 * 32: 3 * 32, 3 * 32 + 3 * 64: 3 * 32}


@pytest.fixture
def engine_with_lora(engine, tmp_path, monkeypatch):
    folder = tmp_path / "loras"
    monkeypatch.setitem(engine.lora_dirs, "z_image", folder)
    monkeypatch.setitem(engine.registry.types[MODEL].model, "architecture", "z_image_base")
    write_style(folder / "style.safetensors", linear_shapes(engine.load(MODEL).transformer), "peft", seed=2)
    yield engine
    engine.apply_loras(engine.settings_for(MODEL, prompt="x"))  # detach for the other tests


def test_generation_negative_prediction_unchanged(engine_with_lora, monkeypatch):
    from models.z_image import pipeline

    passes = []
    real = pipeline.flow
    monkeypatch.setattr(pipeline, "flow", lambda *a: passes.append(real(*a)) or passes[-1])
    s = engine_with_lora.settings_for(MODEL, prompt="a lantern", negative_prompt="fog", seed=3, guidance_scale=4.0,
                                      num_inference_steps=1, width=256, height=256)
    runs = {}
    for key, loras in (("plain", []), ("both", [lora_item("style.safetensors")]),
                       ("positive", [lora_item("style.safetensors", positive_only=True)])):
        passes.clear()
        image = np.asarray(engine_with_lora.generate(dataclasses.replace(s, loras=loras))[0].image)
        runs[key] = (passes[0], image)
    (plain, plain_img), (both, both_img), (pos, pos_img) = runs["plain"], runs["both"], runs["positive"]
    assert torch.equal(pos[1:], plain[1:])  # same first step input: the negative prediction is untouched
    assert not torch.equal(both[1:], plain[1:])
    assert not torch.equal(pos[:1], plain[:1])
    assert not np.array_equal(pos_img, both_img) and not np.array_equal(pos_img, plain_img)


def test_png_records_the_option(engine_with_lora, tmp_path):
    s = engine_with_lora.settings_for(MODEL, prompt="a lantern", negative_prompt="fog", seed=3, guidance_scale=4.0,
                                      num_inference_steps=2, loras=[lora_item("style.safetensors", 0.7,
                                                                              positive_only=True)])
    (path,) = engine_with_lora.save(engine_with_lora.generate(s), tmp_path / "out")
    settings, record = read_png_settings(path)
    assert settings.loras == s.loras
    assert record["loras"][0]["positive_only"] is True


def test_without_cfg_a_positive_only_lora_is_noted(engine_with_lora, monkeypatch):
    s = engine_with_lora.settings_for(MODEL, prompt="a lantern", guidance_scale=0.0,
                                      loras=[lora_item("style.safetensors", positive_only=True)])
    assert any("positive branch only" in n for n in engine_with_lora.check(s))
    assert not any("positive branch only" in n
                   for n in engine_with_lora.check(dataclasses.replace(s, guidance_scale=4.0)))
