"""Prompt enhancer on the text encoder's own weights, seed variance, hidden layer and component choices."""

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.errors import Interrupted, ModelFileError, SettingsError
from models.z_image.enhancer import chat_input, fit_budget, generate_tokens, sample_token, strip_thinking
from models.z_image.text import MAX_TOKENS


def image(engine, settings):
    return np.asarray(engine.generate(settings)[0].image)


def test_output_head_shares_the_input_embedding(engine):
    te = engine.load("z_image_tiny_test").encoder.text_encoder
    assert te.lm_head.weight.data_ptr() == te.model.embed_tokens.weight.data_ptr()
    assert te.config.tie_word_embeddings


def test_enhancing_is_seeded_and_leaves_global_rng_alone(engine):
    s = engine.settings_for("z_image_tiny_test", prompt="a cat on a roof", seed=11)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = engine.enhance(s)
    assert torch.equal(torch.rand(1), expected_next)  # sampling used its own seeded stream
    b = engine.enhance(s)
    c = engine.enhance(dataclasses.replace(s, seed=12))
    assert a.prompt == b.prompt and a.prompt != c.prompt
    assert a.original_prompt == "a cat on a roof" and a.prompt


def test_think_blocks_stripped_and_budget_kept(engine):
    assert strip_thinking("<think>plan the scene</think>\n\nA red barn at dawn.") == "A red barn at dawn."
    assert strip_thinking("<think>never closed") == ""
    assert strip_thinking('Prompt: "A lone tree."') == "A lone tree."
    enc = engine.load("z_image_tiny_test").encoder
    long = "A very long description, with many clauses. " * 200
    fitted = fit_budget(enc, long)
    assert len(enc.tokenizer(enc.template(fitted)).input_ids) <= MAX_TOKENS
    assert long.startswith(fitted[:-1])


def test_enhance_progress_and_stop(engine):
    s = engine.settings_for("z_image_tiny_test", prompt="a boat", seed=1)
    seen = []
    engine.enhance(s, on_token=lambda n, rate: seen.append((n, rate)))
    assert seen and seen[-1][0] >= 1 and all(rate > 0 for _, rate in seen)

    def stop(n, rate):
        if n >= 3:
            raise Interrupted("stopped")

    with pytest.raises(Interrupted):
        engine.enhance(s, on_token=stop)


def test_chunked_prompt_reading_matches_one_pass(engine):
    """Reading the prompt a few tokens at a time into the static cache samples the same tokens as one pass."""
    enc = engine.load("z_image_tiny_test").encoder
    te, ids = enc.text_encoder, chat_input(enc.tokenizer, "a red barn", False)
    assert ids.shape[1] > 20 and te.config.num_key_value_heads < te.config.num_attention_heads  # grouped KV
    with torch.no_grad():
        runs = [generate_tokens(te, ids, torch.Generator().manual_seed(5), 12, set(), chunk=c)
                for c in (7, ids.shape[1])]
        te.set_attn_implementation("sdpa")  # transformers' own attention gives the same tokens
        try:
            runs.append(generate_tokens(te, ids, torch.Generator().manual_seed(5), 12, set(), chunk=7))
        finally:
            te.set_attn_implementation("zimage_sdpa")
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) == 12


def test_conditioning_same_with_transformers_attention(engine):
    enc = engine.load("z_image_tiny_test").encoder
    te, prompts = enc.text_encoder, ["a lighthouse on a cliff at dusk, waves below", "a cat"]
    with torch.no_grad():
        ours = type(enc)(te, enc.tokenizer).encode(prompts)  # fresh encoders: no cached results
        te.set_attn_implementation("sdpa")
        try:
            theirs = type(enc)(te, enc.tokenizer).encode(prompts)
        finally:
            te.set_attn_implementation("zimage_sdpa")
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, theirs))


def test_sampling_keeps_top_k_and_top_p():
    logits = torch.tensor([0.0, 5.0, 4.9, -1.0, 3.0])
    g = torch.Generator().manual_seed(0)
    assert {int(sample_token(logits, g, top_k=1)) for _ in range(20)} == {1}
    assert {int(sample_token(logits, g, top_p=0.01)) for _ in range(20)} == {1}  # the most likely always stays
    assert {int(sample_token(logits, g, top_k=2, top_p=1.0)) for _ in range(200)} == {1, 2}


def test_generation_stops_at_end_of_turn(engine):
    enc = engine.load("z_image_tiny_test").encoder
    ids = chat_input(enc.tokenizer, "a boat", False)
    first = generate_tokens(enc.text_encoder, ids, torch.Generator().manual_seed(2), 6, set())
    stopped = generate_tokens(enc.text_encoder, ids, torch.Generator().manual_seed(2), 6, {first[2]})
    assert stopped == first[:first.index(first[2]) + 1]


def test_generate_with_enhance_stores_both_prompts(engine, tmp_path):
    from engine.outputs import read_png_settings

    s = engine.settings_for("z_image_tiny_test", prompt="a lighthouse", seed=4, enhance=True,
                            num_inference_steps=2)
    result = engine.generate(s)[0]
    assert result.settings.original_prompt == "a lighthouse" and result.settings.prompt != "a lighthouse"
    saved, _ = read_png_settings(engine.save([result], tmp_path)[0])
    assert saved.original_prompt == "a lighthouse"
    again = engine.generate(saved)[0]  # restoring does not enhance again: same image
    assert np.array_equal(np.asarray(again.image), np.asarray(result.image))


def test_seed_variance_off_is_identical_on_is_varied_and_reproducible(engine):
    base = engine.settings_for("z_image_tiny_test", prompt="a forest path", seed=8, num_inference_steps=4)
    plain = image(engine, base)
    assert np.array_equal(plain, image(engine, dataclasses.replace(base, seed_variance=0.0)))
    assert np.array_equal(plain, image(engine, dataclasses.replace(base, seed_variance=1.0, seed_variance_steps=0)))
    varied = dataclasses.replace(base, seed_variance=1.0, seed_variance_steps=0.5)
    first = image(engine, varied)
    assert not np.array_equal(first, plain)
    assert np.array_equal(first, image(engine, varied))


def test_seed_variance_only_in_early_steps(engine):
    from models.z_image.pipeline import varied_captions
    from engine.sampling.schedules import shifted_simple

    enc = engine.load("z_image_tiny_test").encoder
    cond = enc.encode(["a cat"])[0]
    s = engine.settings_for("z_image_tiny_test", prompt="a cat", seed_variance=1.0, seed_variance_steps=0.5,
                            num_inference_steps=4, batch_size=2)
    sigmas = shifted_simple(4, 3.0)
    captions = varied_captions(cond, s, seed=1, schedule=sigmas)
    early, late = captions(sigmas[1]), captions(sigmas[2])
    assert not torch.equal(early[0], cond) and not torch.equal(early[0], early[1])  # per image in the batch
    assert all(torch.equal(c, cond) for c in late)


def test_another_hidden_layer_changes_conditioning(engine):
    enc = engine.load("z_image_tiny_test").encoder
    a = enc.encode(["a dog"], hidden_layer=-2)[0]
    b = enc.encode(["a dog"], hidden_layer=-3)[0]
    assert a.shape == b.shape and not torch.allclose(a, b)
    full = enc.text_encoder(**enc.tokenizer([enc.template("a dog")], return_tensors="pt"), output_hidden_states=True)
    torch.testing.assert_close(b, full.hidden_states[-3][0])
    with pytest.raises(SettingsError, match="out of range"):
        enc.encode(["a dog"], hidden_layer=-30)


def test_wrong_shape_encoder_or_vae_refused(engine, tmp_path, tiny_model_json):
    from engine.engine import Engine
    from models.z_image import tiny

    wide = tiny.make_text_encoder(hidden=48, heads=2, kv_heads=1)
    save_file(tiny.state_dict_for_file(wide), str(tmp_path / "wide.safetensors"))
    small_vae = tiny.make_vae(channels=(32, 32, 32))
    save_file(tiny.state_dict_for_file(small_vae), str(tmp_path / "vae3.safetensors"))
    for override, message in [({"text_encoder_URLs": str(tmp_path / "wide.safetensors")}, "width 48"),
                              ({"vae_URLs": str(tmp_path / "vae3.safetensors")}, "4x")]:
        eng = Engine(engine.registry, engine.locator, components=override)
        with pytest.raises(ModelFileError, match=message):
            eng.load("z_image_tiny_test")


def test_alternative_encoder_is_used(engine, tmp_path):
    from engine.engine import Engine
    from models.z_image import tiny

    other = tiny.make_text_encoder(seed=99)
    save_file(tiny.state_dict_for_file(other), str(tmp_path / "other.safetensors"))
    eng = Engine(engine.registry, engine.locator, components={"text_encoder_URLs": str(tmp_path / "other.safetensors")})
    s = engine.settings_for("z_image_tiny_test", prompt="same prompt", seed=2, num_inference_steps=2)
    assert not np.array_equal(image(eng, s), image(engine, s))
    assert eng.model.files["text_encoder"].endswith("other.safetensors")
