"""Generation on tiny models: same images as diffusers' ZImagePipeline, pass counts, caching, seeds."""

import dataclasses

import numpy as np
import pytest
import torch


def diffusers_images(models, tokenizer, settings):
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=settings.flow_shift),
                          vae=models["vae"], text_encoder=models["text_encoder"], tokenizer=tokenizer,
                          transformer=models["transformer"])
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=settings.prompt, negative_prompt=settings.negative_prompt or None,
               height=settings.height, width=settings.width, num_inference_steps=settings.num_inference_steps,
               guidance_scale=settings.guidance_scale, cfg_truncation=settings.cfg_truncation,
               cfg_normalization=settings.cfg_normalization, num_images_per_prompt=settings.batch_size,
               generator=torch.Generator("cpu").manual_seed(settings.seed))
    return [np.asarray(im, dtype=np.int16) for im in out.images]


def ours(engine, settings):
    return [np.asarray(r.image, dtype=np.int16) for r in engine.generate(settings)]


def assert_same_images(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert np.abs(x - y).max() <= 1  # float rounding may move a pixel by one level at most


def test_turbo_matches_diffusers(engine, tiny_models, tiny_tokenizer):
    s = engine.settings_for("z_image_tiny_test", prompt="a red fox in snow", seed=42, width=256, height=320)
    assert_same_images(ours(engine, s), diffusers_images(tiny_models, tiny_tokenizer, s))


def test_base_cfg_matches_diffusers(engine, tiny_models, tiny_tokenizer, monkeypatch):
    from models.z_image import handler

    # the tiny test model is declared as Turbo; run it as the base architecture for CFG
    monkeypatch.setitem(engine.registry.types["z_image_tiny_test"].model, "architecture", "z_image_base")
    s = engine.settings_for("z_image_tiny_test", prompt="a lighthouse", negative_prompt="blurry", seed=7,
                            guidance_scale=4.0, cfg_truncation=0.6, cfg_normalization=1.2, batch_size=2,
                            num_inference_steps=6)
    assert handler.CAPABILITIES["z_image_base"].cfg
    assert_same_images(ours(engine, s), diffusers_images(tiny_models, tiny_tokenizer, s))


def test_one_pass_per_step_and_cfg_batched(engine, monkeypatch):
    s = engine.settings_for("z_image_tiny_test", prompt="a cat", seed=1, num_inference_steps=5)
    engine.generate(s)
    before = engine.model.passes
    engine.generate(s)
    assert engine.model.passes - before == 5  # no pass at sigma 0

    monkeypatch.setitem(engine.registry.types["z_image_tiny_test"].model, "architecture", "z_image_base")
    before = engine.model.passes
    engine.generate(dataclasses.replace(s, guidance_scale=3.0))
    assert engine.model.passes - before == 5  # positive and negative in one batched pass


def test_cfg_truncation_stops_guidance(engine, monkeypatch):
    monkeypatch.setitem(engine.registry.types["z_image_tiny_test"].model, "architecture", "z_image_base")
    base = engine.settings_for("z_image_tiny_test", prompt="a cat", negative_prompt="a dog", seed=3)
    off = np.asarray(engine.generate(dataclasses.replace(base, guidance_scale=0.0))[0].image)
    truncated = np.asarray(engine.generate(dataclasses.replace(base, guidance_scale=5.0, cfg_truncation=0.0))[0].image)
    guided = np.asarray(engine.generate(dataclasses.replace(base, guidance_scale=5.0))[0].image)
    # truncation 0 keeps guidance for the first step only (1 - sigma = 0 is not past 0), as diffusers does
    assert not np.array_equal(off, truncated)
    assert not np.array_equal(truncated, guided)
    assert not np.array_equal(off, guided)


def test_prompt_cache_skips_encoder(engine):
    s = engine.settings_for("z_image_tiny_test", prompt="cached prompt", seed=5, num_inference_steps=2)
    engine.generate(s)
    calls = engine.model.encoder.calls
    engine.generate(dataclasses.replace(s, seed=6))
    assert engine.model.encoder.calls == calls
    engine.generate(dataclasses.replace(s, prompt="another prompt"))
    assert engine.model.encoder.calls == calls + 1


def test_encoder_stops_at_layer_minus_two(engine):
    enc = engine.load("z_image_tiny_test").encoder
    text = enc.template("a bicycle")
    batch = enc.tokenizer([text], return_tensors="pt")
    calls = []
    last = enc.text_encoder.model.layers[-1]
    handle = last.register_forward_hook(lambda *a: calls.append(1))
    try:
        ours_feats = enc._hidden_state(batch.input_ids, batch.attention_mask.bool())
    finally:
        handle.remove()
    full = enc.text_encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            output_hidden_states=True).hidden_states[-2]
    assert not calls  # the last layer never ran
    torch.testing.assert_close(ours_feats, full)


def test_count_runs_use_successive_seeds(engine):
    s = engine.settings_for("z_image_tiny_test", prompt="a boat", seed=10, count=2, num_inference_steps=3)
    results = engine.generate(s)
    assert [r.settings.seed for r in results] == [10, 11]
    single = engine.generate(dataclasses.replace(s, seed=11, count=1))[0]
    assert np.array_equal(np.asarray(results[1].image), np.asarray(single.image))
    assert not np.array_equal(np.asarray(results[0].image), np.asarray(results[1].image))


def test_random_seed_is_recorded(engine):
    s = engine.settings_for("z_image_tiny_test", prompt="a boat", seed=-1, num_inference_steps=2)
    r = engine.generate(s)[0]
    assert r.settings.seed >= 0
    again = engine.generate(r.settings)[0]
    assert np.array_equal(np.asarray(r.image), np.asarray(again.image))


@pytest.mark.parametrize("w,h", [(256, 512), (512, 256)])
def test_sizes(engine, w, h):
    s = engine.settings_for("z_image_tiny_test", prompt="x", seed=0, width=w, height=h, num_inference_steps=1)
    assert engine.generate(s)[0].image.size == (w, h)
