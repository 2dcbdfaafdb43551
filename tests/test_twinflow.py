"""TwinFlow: its schedule, its time conditioning and its unified sampler on a tiny TwinFlow model."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from engine.sampling.schedules import twinflow_times
from models.z_image.twinflow import model_time, target_time
from tests.latents import latents


def test_times_per_step_count():
    expected = {
        1: [0.999, 0.0],
        2: [0.999, 0.6, 0.0],  # the official 2-step config (0.001, 0.6)
        3: [0.999, 0.7495, 0.5, 0.0],  # the nearer config: 4 steps' (0.001, 0.5)
        4: [0.999, 0.999 - 0.499 / 3, 0.999 - 2 * 0.499 / 3, 0.5, 0.0],
        6: [0.999, 0.8325, 0.666, 0.4995, 0.333, 0.1665, 0.0],  # (0.001, 0): 7 points, the last one dropped
    }
    for steps, times in expected.items():
        got = twinflow_times(steps)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, torch.tensor(times, dtype=torch.float64))


def test_model_time():
    torch.testing.assert_close(model_time(torch.tensor([0.999, 0.6, 0.0, 1.0])),
                               torch.tensor([0.001, 0.4, 0.0, 0.0], dtype=torch.float64))


@pytest.fixture(scope="module")
def twinflow_transformer():
    from models.z_image.tiny import make_transformer

    return make_transformer(seed=3, twinflow=True)


def run(tr, t_m, tt_m=None):
    x = [torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(0))]
    cap = [torch.randn(20, tr.config.cap_feat_dim, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        if tt_m is None:
            return tr(x, t_m.abs(), cap, return_dict=False)[0][0]
        with target_time(tr, t_m, tt_m):
            return tr(x, t_m.abs(), cap, return_dict=False)[0][0]


def test_second_embedder_vanishes_at_target_equal_current(twinflow_transformer):
    tr = twinflow_transformer
    t_m = torch.tensor([0.4], dtype=torch.float64)
    plain = run(tr, t_m)
    assert torch.equal(run(tr, t_m, t_m.clone()), plain)
    assert not torch.allclose(run(tr, t_m, torch.zeros(1, dtype=torch.float64)), plain)
    assert not tr.t_embedder._forward_hooks  # the hook lives only inside the block


def test_time_embedding_formula(twinflow_transformer):
    tr = twinflow_transformer
    t_m, tt_m = torch.tensor([0.25], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)
    seen = []
    hook = tr.all_final_layer["2-1"].register_forward_hook(lambda m, args, kw, o: seen.append(kw["c"]),
                                                           with_kwargs=True)
    try:
        run(tr, t_m, tt_m)
    finally:
        hook.remove()
    with torch.no_grad():
        direct = tr.t_embedder(t_m.abs() * 1000).double() + tr.t_embedder_2((tt_m - t_m) * 1000).double() * 0.25
    torch.testing.assert_close(seen[0].double(), direct, rtol=1e-6, atol=1e-6)


# ---- generation -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def twin_engine(tmp_path_factory):
    from engine.engine import Engine
    from engine.weights.files import FileLocator
    from engine.registry import Registry
    from models import families
    from models.z_image.tiny import write_test_model

    folder = tmp_path_factory.mktemp("twinflow")
    path = write_test_model(folder, name="twinflow_tiny_test", twinflow=True)
    data = json.loads(path.read_text())
    data["model"]["architecture"] = "z_image_twinflow_turbo"
    data["num_inference_steps"] = 2
    path.write_text(json.dumps(data))
    plain = write_test_model(folder / "plain", name="not_twinflow_test")  # a Turbo file under TwinFlow's type
    data["model"]["URLs"] = str(plain.parent / "transformer.safetensors")
    (folder / "not_twinflow_test.json").write_text(json.dumps(data))
    return Engine(Registry(families(), extra_files=[path, folder / "not_twinflow_test.json"]), FileLocator(offline=True))


def test_unified_sampler_generation(twin_engine):
    s = twin_engine.settings_for("twinflow_tiny_test", prompt="a red fox", seed=21)
    assert (s.sampler, s.num_inference_steps) == ("twinflow", 2)  # the type's defaults
    first = latents(twin_engine, s)[0]
    model = twin_engine.model
    assert model.transformer.t_embedder_2 is not None
    for steps in (1, 2, 4):
        before = model.passes
        out = latents(twin_engine, dataclasses.replace(s, num_inference_steps=steps))[0]
        assert model.passes - before == steps  # 2 steps = 2 transformer passes
        assert np.isfinite(out).all()
    assert np.array_equal(latents(twin_engine, s)[0], first)  # same seed, same image
    assert not np.array_equal(latents(twin_engine, dataclasses.replace(s, seed=22))[0], first)


def test_one_step_is_the_clean_prediction_from_the_noise(twin_engine):
    from models.z_image.pipeline import initial_noise, make_twinflow_fn

    s = twin_engine.settings_for("twinflow_tiny_test", prompt="a red fox", seed=5, num_inference_steps=1)
    out = latents(twin_engine, s)[0]
    model = twin_engine.model
    z = initial_noise(s, torch.Generator("cpu").manual_seed(5), 16)
    captions = model.encoder.encode([s.prompt]) * z.shape[0]
    f = make_twinflow_fn(model, lambda t: captions)(z, torch.tensor(0.999, dtype=torch.float64),
                                                    torch.tensor(0.0, dtype=torch.float64))
    np.testing.assert_allclose(out, (z - 0.999 * f)[0].numpy(), rtol=1e-5, atol=1e-5)


def test_renoising_draws_from_the_seed(twin_engine):
    """Two steps re-noise between passes: the second pass sees fresh noise, not the initial noise again."""
    from engine.sampling.samplers import sample_twinflow

    seen = []

    def model_fn(x, t, target):
        seen.append(x.clone())
        return torch.zeros_like(x)  # predicts x0_hat = x

    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(9)
    out = sample_twinflow(model_fn, z, twinflow_times(2), generator=gen)
    fresh = (seen[1] - 0.4 * z) / 0.6  # x = (1 - 0.6) * x0_hat + 0.6 * noise, x0_hat = z
    expected_noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(fresh, expected_noise)
    torch.testing.assert_close(out, seen[1])  # the result is the last clean prediction


def test_nag_works_with_twinflow(twin_engine):
    s = twin_engine.settings_for("twinflow_tiny_test", prompt="a red fox", seed=21, nag_scale=3.0, nag_end=1.0)
    plain = latents(twin_engine, s)[0]
    guided = latents(twin_engine, dataclasses.replace(s, negative_prompt="blurry"))[0]
    assert np.abs(guided - plain).max() > 1e-3


def test_plain_transformer_is_refused(twin_engine):
    from engine.errors import ModelFileError

    s = twin_engine.settings_for("not_twinflow_test", prompt="x")
    with pytest.raises(ModelFileError, match="t_embedder_2"):
        twin_engine.generate(s)
