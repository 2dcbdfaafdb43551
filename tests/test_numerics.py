"""float16 without black images: where Z-Image overflows (measured on the tiny model with forced large
activations), the guards that keep a float16 generation finite, and the checks that fail a generation with NaN/inf
latents or pixels, or an all-black decode, instead of saving a black PNG.

PSNR bound of the float16 image (guarded, forced activations) against the float32 image: >= 30 dB (measured 60).
"""

import json

import numpy as np
import pytest
import torch

from engine.engine import Engine
from engine.errors import GenerationError
from engine.registry import ROOT, Registry
from engine.weights.files import FileLocator
from models import families
from models.z_image import fp16, tiny
from tests.test_gguf import psnr

FORCE = 300.0  # w1 and w3 of layer 0 scaled up: the gated product reaches ~2e5 (fp16 stops at 65504)


def forced_transformer():
    model = tiny.make_transformer()
    with torch.no_grad():
        model.layers[0].feed_forward.w1.weight.mul_(FORCE)
        model.layers[0].feed_forward.w3.weight.mul_(FORCE)
    return model


def run(model, dtype):
    x, t, cap = [torch.randn(16, 1, 32, 32, generator=torch.Generator().manual_seed(0))], torch.tensor([0.4]), \
        [torch.randn(9, 32, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        return model([x[0].to(dtype)], t, [cap[0].to(dtype)], return_dict=False)[0][0].float()


def test_where_float16_overflows_and_the_guards_fix_it():
    model = forced_transformer()
    peaks = {}

    def record(name):
        def hook(_m, args, out):
            peaks[name] = max(peaks.get(name, 0.0), float(args[0].abs().max()), float(out.abs().max()))
        return hook

    for i, block in enumerate(model.layers):
        block.feed_forward.w2.register_forward_hook(record(f"layers.{i}.feed_forward.w2"))
        block.attention.to_out[0].register_forward_hook(record(f"layers.{i}.attention.to_out.0"))
    reference = run(model, torch.float32)
    over = sorted(k for k, v in peaks.items() if v > fp16.FP16_MAX)
    print(f"\npeak |activation| per point (float32): {peaks}")
    assert over == ["layers.0.feed_forward.w2"]  # the feed-forward's gated product / output is where it overflows
    assert peaks["layers.0.feed_forward.w2"] < fp16.FP16_MAX * fp16.DOWNSCALE  # the downscale keeps it exact

    half = forced_transformer().half()
    assert not torch.isfinite(run(half, torch.float16)).all()  # unguarded: inf, then NaN
    eps = half.layers[0].ffn_norm2.eps
    assert fp16.install_fp16_guards(half) == len(half.layers) + 2 * len(half.noise_refiner)
    assert fp16.install_fp16_guards(half) == 0  # once only
    assert half.layers[0].ffn_norm2.eps == pytest.approx(eps / fp16.DOWNSCALE**2)
    guarded = run(half, torch.float16)
    assert torch.isfinite(guarded).all()
    assert (guarded - reference).norm() / reference.norm() < 0.01


@pytest.fixture(scope="module")
def forced_type(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp16")
    parts = {"transformer": forced_transformer(), "text_encoder": tiny.make_text_encoder(), "vae": tiny.make_vae()}
    (root / "ft").mkdir()
    data = {"model": {"architecture": "z_image", **tiny.write_parts(root, parts)}}
    (root / "ft" / "forced.json").write_text(json.dumps(data))
    return root


def make_engine(root, dtype=None):
    return Engine(Registry(families(), (ROOT / "defaults", root / "ft")), FileLocator(root / "ck", offline=True), dtype)


def settings(engine):
    return engine.settings_for("forced", prompt="a lighthouse at dusk", seed=3, width=256, height=256,
                               num_inference_steps=3)


def test_float16_generation_is_finite_and_close_to_float32(forced_type):
    ref = np.asarray(make_engine(forced_type).generate(settings(make_engine(forced_type)))[0].image)
    engine = make_engine(forced_type, "float16")
    img = np.asarray(engine.generate(settings(engine))[0].image)
    value = psnr(ref, img)
    print(f"\nPSNR float16 (guarded, forced activations) vs float32 image: {value:.1f} dB (bound 30)")
    assert engine.model.transformer.layers[0]._fp16_guarded and img.max() > 0
    assert value >= 30


def test_float16_overflow_without_guards_is_reported(forced_type, monkeypatch):
    monkeypatch.setattr(fp16, "install_fp16_guards", lambda model: 0)
    engine = make_engine(forced_type, "float16")
    with pytest.raises(GenerationError, match=r"NaN/inf.*float16 overflow.*--dtype bfloat16"):
        engine.generate(settings(engine))


def test_nan_weight_is_reported_and_nothing_saved(forced_type, tmp_path, capsys):
    """A damaged file (a NaN stored in a weight): the CLI fails with the cause, and no PNG is written."""
    from safetensors.torch import load_file, save_file

    from app.cli import main

    data = json.loads((forced_type / "ft" / "forced.json").read_text())
    sd = load_file(data["model"]["URLs"])
    sd["layers.1.attention.to_v.weight"][0, 0] = float("nan")
    save_file(sd, str(tmp_path / "damaged.safetensors"))
    data["model"]["URLs"] = str(tmp_path / "damaged.safetensors")
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "damaged.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    code = main(["generate", "--finetunes", str(tmp_path / "ft"), "--checkpoints", str(tmp_path / "ck"), "--model",
                 "damaged", "--prompt", "a test", "--steps", "2", "--width", "256", "--height", "256",
                 "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "NaN/inf" in err and "damaged weight file" in err and "model call 1" in err
    assert not out.exists() or not list(out.glob("*.png"))


def test_nan_in_latents_is_reported(forced_type, monkeypatch):
    from models.z_image import pipeline

    real = pipeline.initial_noise

    def poisoned(*args, **kwargs):
        x = real(*args, **kwargs)
        x[0, 0, 0, 0] = float("nan")
        return x

    monkeypatch.setattr(pipeline, "initial_noise", poisoned)
    engine = make_engine(forced_type)
    with pytest.raises(GenerationError, match="latents hold NaN/inf values before model call 1"):
        engine.generate(settings(engine))


def test_all_black_decode_is_reported(forced_type, monkeypatch):
    engine = make_engine(forced_type)
    vae = engine.load("forced").vae
    monkeypatch.setattr(vae, "decode", lambda z, return_dict=False: (torch.full((z.shape[0], 3, 256, 256), -1.0),))
    with pytest.raises(GenerationError, match="all-black image.*VAE"):
        engine.generate(settings(engine))
    monkeypatch.setattr(vae, "decode", lambda z, return_dict=False: (torch.full((z.shape[0], 3, 256, 256), -0.99),))
    assert engine.generate(settings(engine))  # a very dark but real image is not refused
