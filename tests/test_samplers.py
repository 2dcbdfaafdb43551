"""Samplers and schedules: their math on an exactly known flow, and each one on the tiny model."""

import dataclasses

import numpy as np
import pytest
import torch

from engine.sampling.samplers import SAMPLERS, passes_per_image
from engine.sampling.schedules import SCHEDULES, beta, rescale, sgm_uniform, shifted_simple, warp
from engine.sampling.windows import step_of as step_index
from tests.latents import latents

FLOW_SAMPLERS = [name for name, info in SAMPLERS.items() if not info.time_target]
MU, C = 0.7, 0.5  # the data: every latent value ~ N(MU, C^2)


def gaussian_flow(x, sigma):
    """The exact flow v = noise - clean for Gaussian data, from E[clean | x] in closed form."""
    s = float(sigma)
    var = (1 - s) ** 2 * C**2 + s**2
    clean = MU + (1 - s) * C**2 / var * (x - (1 - s) * MU)
    return (x - clean) / s


def ode_end(z):
    """Where the probability-flow ODE takes noise z: the data point at the same standard score."""
    return MU + C * z


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_schedules_shape(schedule):
    for steps in (1, 2, 8, 30):
        s = SCHEDULES[schedule](steps, 3.0)
        assert s.dtype == torch.float32 and len(s) == steps + 1
        assert s[0] == pytest.approx(1.0) and s[-1] == 0
        assert (s[1:] < s[:-1]).all()


def test_schedule_values():
    torch.testing.assert_close(beta(2, 1.0), torch.tensor([1.0, 0.5, 0.0]))  # the median of a symmetric Beta
    b = beta(8, 1.0)
    torch.testing.assert_close(b[1:8] + b[1:8].flip(0), torch.ones(7))  # Beta(a, a) quantiles: q and 1 - q
    assert b[0] - b[1] < b[3] - b[4]  # denser at the ends than in the middle
    sgm = sgm_uniform(4, 1.0)
    torch.testing.assert_close(sgm[:4], torch.linspace(1.0, 0.001, 5)[:4])
    torch.testing.assert_close(sgm_uniform(4, 3.0)[:4], warp(torch.linspace(1.0, float(warp(torch.tensor(0.001),
                                                                                           3.0)), 5)[:4], 3.0))
    torch.testing.assert_close(rescale(shifted_simple(4, 3.0), 0.996), shifted_simple(4, 3.0) * 0.996)
    assert rescale(shifted_simple(4, 3.0), 0.996)[-1] == 0


def test_step_index():
    s = shifted_simple(8, 3.0)
    assert [step_index(s, v) for v in s[:-1]] == list(range(8))
    assert step_index(s, (s[2] + s[3]) / 2) == 2  # a stage inside step 2


def test_samplers_on_exact_flow():
    """Deterministic samplers converge to the ODE's end: Euler at first order (twice the steps, half the
    error), the others faster (their last step to sigma 0 is first order, as in k-diffusion, except Ralston's)."""
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))

    def error(name, steps):
        out = SAMPLERS[name].fn(gaussian_flow, z.clone(), shifted_simple(steps, 3.0))
        return (out - ode_end(z)).abs().mean().item()

    assert error("euler", 12) / error("euler", 24) == pytest.approx(2.0, abs=0.3)
    for name in ("heun", "ralston", "dpmpp_2m"):
        assert error(name, 12) / error(name, 24) > 3.4, name
        assert error(name, 24) < error("euler", 24) / 3, name


def test_euler_ancestral_samples_the_data():
    """Stochastic, but its samples follow the data distribution (their spread converges slowly: the last
    step returns a posterior mean)."""
    z = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(1))

    def sample(steps):
        return SAMPLERS["euler_ancestral"].fn(gaussian_flow, z, shifted_simple(steps, 1.0),
                                              generator=torch.Generator().manual_seed(2))

    out = sample(400)
    assert out.mean().item() == pytest.approx(MU, abs=0.01)
    assert out.std().item() == pytest.approx(C, abs=0.01)
    assert sample(20).std() < C - 0.03  # coarse steps fall short: the spread comes from the steps' noise
    assert (out - ode_end(z)).abs().mean() > 0.1  # not the deterministic path


def test_callback_and_passes():
    for name in FLOW_SAMPLERS:
        calls, steps = [], []
        model_fn = lambda x, s: calls.append(float(s)) or gaussian_flow(x, s)  # noqa: E731
        SAMPLERS[name].fn(model_fn, torch.zeros(1, 1, 2, 2), shifted_simple(5, 3.0),
                          callback=lambda i, n, x: steps.append((i, n)), generator=torch.Generator().manual_seed(0))
        assert len(calls) == passes_per_image(name, 5), name
        assert 0 not in calls  # no pass at sigma 0
        assert steps == [(i, 5) for i in range(5)]
    assert [SAMPLERS[n].passes_per_step for n in ("heun", "ralston", "euler")] == [2, 2, 1]


# ---- on the tiny model ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FLOW_SAMPLERS)
def test_sampler_on_tiny_model(engine, name):
    s = engine.settings_for("z_image_tiny_test", prompt="a lighthouse", seed=4, num_inference_steps=3, sampler=name,
                            scheduler="beta", sigma_rescale=0.996)
    first = latents(engine, s)[0]
    before = engine.model.passes
    assert np.array_equal(latents(engine, s)[0], first)  # same seed, same image
    assert engine.model.passes - before == passes_per_image(name, 3)
    assert np.isfinite(first).all()
    assert not np.array_equal(latents(engine, dataclasses.replace(s, seed=5))[0], first)


def test_sampler_and_scheduler_are_validated(engine):
    from engine.errors import SettingsError

    s = engine.settings_for("z_image_tiny_test", prompt="x")
    with pytest.raises(SettingsError, match="sampler 'twinflow' is not available"):
        engine.check(dataclasses.replace(s, sampler="twinflow"))
    with pytest.raises(SettingsError, match="unknown scheduler 'karras'.*sgm_uniform"):
        engine.check(dataclasses.replace(s, scheduler="karras"))
    with pytest.raises(SettingsError, match="sigma rescale"):
        dataclasses.replace(s, sigma_rescale=1.5).validate()


def test_schedules_and_rescale_reach_the_pipeline(engine):
    base = engine.settings_for("z_image_tiny_test", prompt="a boat", seed=8, num_inference_steps=3)
    runs = [latents(engine, dataclasses.replace(base, **kw))[0] for kw in
            ({}, {"scheduler": "beta"}, {"scheduler": "sgm_uniform"}, {"sigma_rescale": 0.9},
             {"sampler": "euler_ancestral"})]
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            assert not np.allclose(a, b)
