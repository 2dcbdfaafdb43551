"""NAG: the per-token math, the attention processor, the negative stream, and generation on the tiny model."""

import dataclasses

import numpy as np
import pytest
import torch

from models.z_image.nag import NAGAttnProcessor, NegativeAttentionGuidance, _PassState, nag_guidance, refine_caption
from tests.latents import latents


def direct_nag(z_pos, z_neg, s, tau, alpha):
    """The paper's steps, token by token, in float64."""
    out = torch.empty_like(z_pos, dtype=torch.float64)
    for idx in np.ndindex(*z_pos.shape[:-1]):
        p, n = z_pos[idx].double(), z_neg[idx].double()
        g = p + (s - 1) * (p - n)
        r = g.abs().sum() / p.abs().sum()
        if r > tau:
            g = g * tau / r
        out[idx] = alpha * g + (1 - alpha) * p
    return out


def test_guidance_math_matches_direct():
    gen = torch.Generator().manual_seed(0)
    z_pos = torch.randn(2, 9, 24, generator=gen)
    z_neg = z_pos + 0.3 * torch.randn(2, 9, 24, generator=gen)
    z_neg[:, :4] = -z_pos[:, :4] * 2  # far apart: these tokens are clipped
    s, tau, alpha = 3.0, 2.5, 0.25
    ratio = (z_pos + (s - 1) * (z_pos - z_neg)).abs().sum(-1) / z_pos.abs().sum(-1)
    assert (ratio > tau).any() and (ratio <= tau).any()  # both branches are exercised
    torch.testing.assert_close(nag_guidance(z_pos, z_neg, s, tau, alpha).double(),
                               direct_nag(z_pos, z_neg, s, tau, alpha), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(nag_guidance(z_pos, z_neg, s, tau, 0.0), z_pos)  # alpha 0: the positive only
    clipped = nag_guidance(z_pos, z_neg, s, tau, 1.0)[ratio > tau]
    torch.testing.assert_close(clipped.abs().sum(-1), tau * z_pos[ratio > tau].abs().sum(-1))
    zero = torch.zeros(1, 24)
    assert torch.isfinite(nag_guidance(zero, torch.ones(1, 24), s, tau, alpha)).all()


@pytest.mark.parametrize("n_neg", [32, 64, 8])  # equal to, longer and shorter than the positive caption
def test_processor_matches_attention_over_each_caption(tiny_models, n_neg):
    """Z+ and Z- equal diffusers' own processor run on [image, positive] and [image, negative] alone."""
    from diffusers.models.transformers.transformer_z_image import ZSingleStreamAttnProcessor

    tr = tiny_models["transformer"]
    attn = tr.layers[0].attention
    n_img, n_pos, batch = 64, 32, 2
    total = n_img + n_pos + n_neg
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(batch, total, tr.dim, generator=gen)
    ids = torch.randint(0, 40, (total, 3), generator=gen)
    freqs = tr.rope_embedder(ids).unsqueeze(0).expand(batch, -1, -1)
    nag = NegativeAttentionGuidance(tr, None, scale=4.0, tau=2.0, alpha=0.5)
    state = _PassState(None, None, [(n_img, n_pos, n_neg)] * batch)
    with torch.no_grad():
        ours = NAGAttnProcessor(nag, state)(attn, hidden, freqs_cis=freqs)
        out_proj, attn.to_out[0] = attn.to_out[0], torch.nn.Identity()
        try:
            base = ZSingleStreamAttnProcessor()
            keep = torch.cat([torch.arange(n_img), torch.arange(n_img + n_pos, total)])
            z_pos = base(attn, hidden[:, :n_img + n_pos], freqs_cis=freqs[:, :n_img + n_pos])
            z_neg = base(attn, hidden[:, keep], freqs_cis=freqs[:, keep])
        finally:
            attn.to_out[0] = out_proj
        # both captions end at the same position: pair the caption tokens from their ends
        expected = z_pos.clone()
        expected[:, :n_img] = nag_guidance(z_pos[:, :n_img], z_neg[:, :n_img], 4.0, 2.0, 0.5)
        for j in range(n_pos):
            partner = j - (n_pos - n_neg)
            if 0 <= partner < n_neg:
                expected[:, n_img + j] = nag_guidance(z_pos[:, n_img + j], z_neg[:, n_img + partner], 4.0, 2.0, 0.5)
        expected = out_proj(torch.cat([expected, z_neg[:, n_img:]], dim=1))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_refined_negative_is_what_forward_makes_of_a_caption(tiny_models):
    """The negative goes through the same padding, embedder and context refiner as the positive caption."""
    tr = tiny_models["transformer"]
    caption = torch.randn(45, tr.config.cap_feat_dim, generator=torch.Generator().manual_seed(2))
    seen = []
    hook = tr.context_refiner[-1].register_forward_hook(lambda m, i, o: seen.append(o[0]))
    try:
        with torch.no_grad():
            tr([torch.randn(16, 1, 32, 32)], torch.tensor([0.5]), [caption])
    finally:
        hook.remove()
    refined, freqs = refine_caption(tr, caption)
    assert refined.shape[0] == 64  # padded to a multiple of 32
    torch.testing.assert_close(refined, seen[0])
    expected_ids = torch.zeros(64, 3, dtype=torch.long)
    expected_ids[:, 0] = torch.arange(1, 65)  # pad tokens included, as diffusers numbers them
    torch.testing.assert_close(freqs, tr.rope_embedder(expected_ids))


@pytest.mark.parametrize("negative_tokens", [20, 45, 90])
def test_negative_sees_the_image_as_a_caption_in_its_slot_would(tiny_models, negative_tokens):
    """With NAG reduced to Z- (scale 0, no clipping, alpha 1), the image tokens' first attention equals a
    plain forward's with the negative as the caption: same relative positions, whatever its length."""
    tr = tiny_models["transformer"]
    gen = torch.Generator().manual_seed(5)
    positive = torch.randn(45, tr.config.cap_feat_dim, generator=gen)
    negative = torch.randn(negative_tokens, tr.config.cap_feat_dim, generator=gen)
    x, t = [torch.randn(16, 1, 32, 32, generator=gen)], torch.tensor([0.4])

    def first_attention(caption, nag=None):
        seen = []
        hook = tr.layers[0].attention.register_forward_hook(lambda m, i, o: seen.append(o[0, :256]))
        try:
            with torch.no_grad():
                if nag is None:
                    tr(x, t, [caption])
                else:
                    with nag.applied():
                        tr(x, t, [caption])
        finally:
            hook.remove()
        return seen[0]

    only_negative = NegativeAttentionGuidance(tr, negative, scale=0.0, tau=1e9, alpha=1.0)
    torch.testing.assert_close(first_attention(positive, only_negative), first_attention(negative),
                               rtol=1e-4, atol=1e-5)


# ---- generation on the tiny model (final latents: the decode adds nothing here) ------------------------------

@pytest.fixture
def base(engine):
    return engine.settings_for("z_image_tiny_test", prompt="a red fox in the snow", seed=11, num_inference_steps=3,
                               nag_scale=4.0, nag_tau=2.5, nag_alpha=0.5, nag_end=1.0)


def test_scale_one_is_bit_identical_and_scale_above_changes(engine, base):
    plain = latents(engine, dataclasses.replace(base, negative_prompt=""))[0]
    assert np.array_equal(latents(engine, dataclasses.replace(base, negative_prompt="blurry", nag_scale=1.0))[0],
                          plain)
    guided = latents(engine, dataclasses.replace(base, negative_prompt="blurry"))[0]
    assert np.abs(guided - plain).max() > 1e-3


def test_negative_equal_to_positive_changes_nothing(engine, base):
    """Same caption in both slots: Z- equals Z+ everywhere, so guidance is the identity. This checks the
    negative's positions, refinement and pairing against the positive's (up to float rounding)."""
    plain = latents(engine, dataclasses.replace(base, negative_prompt=""))[0]
    same = latents(engine, dataclasses.replace(base, negative_prompt=base.prompt, nag_scale=8.0, nag_alpha=1.0))[0]
    np.testing.assert_allclose(same, plain, atol=1e-4)


def test_long_negative_and_batches(engine, base):
    long_negative = "blurry, low quality, watermark, text, oversaturated, " * 6
    s = dataclasses.replace(base, negative_prompt=long_negative)
    feats = engine.load("z_image_tiny_test").encoder.encode([s.prompt, long_negative])
    assert len(feats[1]) > 2 * len(feats[0])  # never cut to the positive's length
    single = latents(engine, s)[0]
    assert np.abs(single - latents(engine, dataclasses.replace(s, negative_prompt=""))[0]).max() > 1e-3
    batch = latents(engine, dataclasses.replace(s, batch_size=2))
    np.testing.assert_allclose(batch[0], single, atol=1e-4)  # the batch's first image is the single run's
    assert not np.allclose(batch[0], batch[1])


def test_negative_is_refined_once_per_generation(engine, base):
    model = engine.load("z_image_tiny_test")
    calls = []
    hook = model.transformer.cap_embedder.register_forward_hook(lambda *a: calls.append(1))
    try:
        latents(engine, dataclasses.replace(base, negative_prompt="blurry", count=2))
    finally:
        hook.remove()
    assert len(calls) == 2 * base.num_inference_steps + 1  # the positive every pass (diffusers), the negative once


def test_step_window(engine):
    from engine.sampling.samplers import sample_heun
    from engine.sampling.schedules import shifted_simple
    from models.z_image.pipeline import make_model_fn

    model = engine.load("z_image_tiny_test")
    s = engine.settings_for("z_image_tiny_test", prompt="a cat", negative_prompt="a dog")
    cond, negative = model.encoder.encode([s.prompt, s.negative_prompt])
    sigmas = shifted_simple(8, 3.0)
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))

    def guided_passes(start, end, sampler):
        nag = NegativeAttentionGuidance(model.transformer, negative, 3.0, 2.5, 0.25, start, end)
        sampler(nag.wrap(make_model_fn(model, s, lambda sigma: [cond] * x.shape[0], None), sigmas), x, sigmas)
        return nag.guided_passes

    from engine.sampling.samplers import sample_euler

    assert guided_passes(0.25, 0.75, sample_euler) == 4  # steps 2, 3, 4, 5 of 8
    assert guided_passes(0.0, 1.0, sample_euler) == 8
    assert guided_passes(0.0, 0.75, sample_heun) == 11  # both stages of steps 0-4, the first stage of step 5


def test_applied_only_within_its_block(engine):
    """NAG changes a pass only inside `applied()`; afterwards the transformer is its own again."""
    model = engine.load("z_image_tiny_test")
    tr = model.transformer
    cond, negative = model.encoder.encode(["a cat", "a dog with a long long long long negative prompt"])
    x = [torch.randn(16, 1, 32, 32, generator=torch.Generator().manual_seed(3))]
    t = torch.tensor([0.3])
    nag = NegativeAttentionGuidance(tr, negative, 3.0, 2.5, 0.5)
    with torch.no_grad():
        before = tr(x, t, [cond], return_dict=False)[0][0]
        with nag.applied():
            guided = tr(x, t, [cond], return_dict=False)[0][0]
        after = tr(x, t, [cond], return_dict=False)[0][0]
    assert torch.equal(before, after) and not torch.allclose(before, guided)
    assert tr.layers[0].attention.processor.__class__.__name__ == "ZSingleStreamAttnProcessor"  # restored
    assert "_build_unified_sequence" not in tr.__dict__ and not tr._forward_pre_hooks


def test_notes_follow_nag(engine):
    from models.z_image.handler import HANDLER

    s = engine.settings_for("z_image_tiny_test", prompt="a cat", negative_prompt="a dog")
    assert HANDLER.notes(s, "z_image") == []
    assert "NAG" in HANDLER.notes(dataclasses.replace(s, nag_scale=1.0), "z_image")[0]
    assert HANDLER.notes(dataclasses.replace(s, negative_prompt=""), "z_image") == []  # NAG's default state
    assert HANDLER.notes(dataclasses.replace(s, guidance_scale=4.0), "z_image_base")
