"""Bigger pictures: the hires fix (two passes, one PNG that records both), upscaling an init image (one pass,
or tiles each a pass of its own, controlled by Fun-ControlNet Tile), and the VAE tiled above a size threshold."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from engine.images.upscalers import Upscalers
from engine.sampling.strength import steps_to_run
from models.z_image import images_in
from tests import upscaler_files as UF
from tests.test_img2img import picture  # noqa: F401 (fixture)


def test_hires_fix_runs_both_passes_and_records_them(engine, tmp_path):
    s = engine.settings_for("z_image_tiny_test", prompt="a castle", seed=8, num_inference_steps=3, upscale=2.0,
                            hires_strength=0.5, hires_steps=4)
    model = engine.load("z_image_tiny_test")
    before, steps = model.passes, []
    result = engine.generate(s, callback=lambda run, i, n, lat: steps.append((i, n, tuple(lat.shape[-2:]))))[0]
    assert result.image.size == (512, 512)
    assert model.passes - before == 3 + 2  # the base pass, then 2 of 4 steps at 512x512
    assert [(i, n) for i, n, _ in steps] == [(i, 5) for i in range(5)]  # one count over both passes
    assert [shape for *_, shape in steps] == [(32, 32)] * 3 + [(64, 64)] * 2
    assert [p["size"] for p in result.passes] == [[256, 256], [512, 512]]
    assert [p["steps"] for p in result.passes] == [3, 2] and result.passes[1]["strength"] == 0.5
    from engine.outputs import read_png_settings

    path = engine.save([result], tmp_path / "hires.png")[0]
    settings, record = read_png_settings(path)
    assert (settings.upscale, settings.hires_strength, settings.hires_steps) == (2.0, 0.5, 4)
    assert record["passes"] == result.passes
    again = engine.generate(settings)[0].image  # the PNG's settings make the same picture
    assert np.array_equal(np.asarray(again), np.asarray(result.image))
    base = engine.generate(dataclasses.replace(s, upscale=1.0))[0].image
    assert base.size == (256, 256)


@pytest.mark.parametrize("upscaler", ["latent", "RealESRGAN_x4plus"])
def test_hires_upscalers(engine, tmp_path, monkeypatch, upscaler):
    UF.write(tmp_path, "RealESRGAN_x4plus.safetensors", UF.realesrgan_x4())
    monkeypatch.setattr(engine, "upscalers", Upscalers(tmp_path))
    s = engine.settings_for("z_image_tiny_test", prompt="a castle", seed=8, num_inference_steps=2, upscale=1.5,
                            upscaler=upscaler, hires_strength=0.5, hires_steps=4)
    result = engine.generate(s)[0]
    assert result.image.size == (384, 384)
    lanczos = engine.generate(dataclasses.replace(s, upscaler="lanczos"))[0].image
    assert not np.array_equal(np.asarray(result.image), np.asarray(lanczos))


def test_upscaling_an_init_image(engine, picture):
    s = engine.settings_for("z_image_tiny_test", prompt="sharper", seed=2, num_inference_steps=4,
                            init_image=str(picture), upscale=2.0, strength=0.5)
    result = engine.generate(s)[0]
    assert result.image.size == (512, 512) and [p["size"] for p in result.passes] == [[512, 512]]
    plain = engine.generate(dataclasses.replace(s, strength=0.0))
    lanczos = Image.open(picture).convert("RGB").resize((512, 512), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(plain[0].image), np.asarray(lanczos)) and not plain[0].passes


def test_big_upscale_generates_tiles(engine, picture, monkeypatch):
    monkeypatch.setattr(images_in, "TILED_ABOVE", 256 * 256)
    monkeypatch.setattr(images_in, "TILE", 256)
    monkeypatch.setattr(images_in, "OVERLAP", 64)
    s = engine.settings_for("z_image_tiny_test", prompt="sharper", seed=2, num_inference_steps=4,
                            init_image=str(picture), upscale=1.5, strength=0.5)
    model = engine.load("z_image_tiny_test")
    before = model.passes
    result = engine.generate(s)[0]
    assert result.image.size == (384, 384)
    assert len(result.passes) == 4 and all(p["size"] == [256, 256] for p in result.passes)  # 2 x 2 tiles
    assert model.passes - before == 4 * steps_to_run(4, 0.5)


@pytest.fixture(scope="module")
def tile_engine(tmp_path_factory):
    """A tiny Turbo + Fun-ControlNet 2.1 model (the Tile files share the 2.1 layout)."""
    from engine.engine import Engine
    from engine.registry import Registry
    from engine.weights.files import FileLocator
    from models import families
    from models.z_image.tiny import write_control_test_model

    path = write_control_test_model(tmp_path_factory.mktemp("tile"))
    return Engine(Registry(families(), extra_files=[path]), FileLocator(offline=True))


def test_tile_control_upscale_in_tiles(tile_engine, picture, monkeypatch):
    monkeypatch.setattr(images_in, "TILED_ABOVE", 256 * 256)
    monkeypatch.setattr(images_in, "TILE", 256)
    monkeypatch.setattr(images_in, "OVERLAP", 64)
    s = tile_engine.settings_for("z_image_control_tiny_test", prompt="sharper", seed=2, num_inference_steps=2,
                                 init_image=str(picture), control_image=str(picture), control_mode="raw",
                                 upscale=1.5, strength=1.0)
    model = tile_engine.load("z_image_control_tiny_test")
    from engine.images import io

    loads, real = [], io.load_rgb
    monkeypatch.setattr(io, "load_rgb", lambda path, what, *a, **k: loads.append(what) or real(path, what, *a, **k))
    blocks = model.control.blocks_run
    controlled = np.asarray(tile_engine.generate(s)[0].image, dtype=int)
    assert model.control.blocks_run - blocks == 4 * 2 * model.control.spec.blocks_per_pass  # 4 tiles x 2 steps
    assert loads.count("control image") == 1  # read once for the request, not once per tile
    free = np.asarray(tile_engine.generate(dataclasses.replace(s, control_image=""))[0].image, dtype=int)
    assert controlled.shape == free.shape == (384, 384, 3)
    assert np.abs(controlled - free).max() > 10  # each tile follows its crop of the control picture


def test_control_inpaint_on_an_init_image(tile_engine, picture, tmp_path):
    """With an init image, the mask applies to it (and a 2.x control's inpaint channels see it); kept pixels
    stay exact."""
    m = np.zeros((256, 256), np.uint8)
    m[:, 128:] = 255
    Image.fromarray(m).save(tmp_path / "half.png")
    s = tile_engine.settings_for("z_image_control_tiny_test", prompt="x", seed=1, num_inference_steps=2,
                                 init_image=str(picture), control_image=str(picture), control_mode="none",
                                 mask=str(tmp_path / "half.png"), strength=1.0, mask_blur=0)
    out = np.asarray(tile_engine.generate(s)[0].image, dtype=int)
    original = np.asarray(Image.open(picture).convert("RGB"), dtype=int)
    assert np.array_equal(out[:, :128], original[:, :128])
    assert np.abs(out[:, 128:] - original[:, 128:]).max() > 10


def test_control_on_an_init_image_is_encoded_once_per_request(tile_engine, picture, tmp_path, monkeypatch):
    """The init pass pins kept latents itself: the control's inputs are encoded once (control map + masked
    picture), not the picture's own latent too, and not again for each run of `count`."""
    from models.z_image import vae

    m = np.zeros((256, 256), np.uint8)
    m[:, 128:] = 255
    Image.fromarray(m).save(tmp_path / "half.png")
    s = tile_engine.settings_for("z_image_control_tiny_test", prompt="x", seed=1, num_inference_steps=2,
                                 init_image=str(picture), control_image=str(picture), control_mode="none",
                                 mask=str(tmp_path / "half.png"), strength=1.0, mask_blur=0, count=2)
    tile_engine.load("z_image_control_tiny_test")
    encoded = []
    real = vae.latent_dist
    monkeypatch.setattr(vae, "latent_dist", lambda model, pix: encoded.append(pix.shape) or real(model, pix))
    both = tile_engine.generate(s)
    assert len(both) == 2 and len(encoded) == 2 + 2  # control map + masked picture once; the init once per run
    second = tile_engine.generate(dataclasses.replace(s, seed=2, count=1))[0]
    assert np.array_equal(np.asarray(both[1].image), np.asarray(second.image))  # the kept encoding is the same


def test_tiled_vae_matches_untiled(engine, monkeypatch):
    from models.z_image import vae

    model = engine.load("z_image_tiny_test")
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:512, 0:512]
    a = np.stack([x // 2, y // 2, 128 + 0 * x], -1).astype(np.uint8) + (rng.random((512, 512, 3)) * 20).astype(np.uint8)
    pix = vae.pixels(Image.fromarray(a), model)
    whole = vae.encode_mode(model, pix)
    lat = torch.randn(1, 16, 64, 64, generator=gen) * 0.5
    untiled = np.asarray(vae.decode(model, lat)[0], dtype=np.float32)
    monkeypatch.setattr(vae, "TILE_ABOVE", 256 * 256)
    monkeypatch.setattr(vae, "TILE_PX", 256)
    calls = []
    handle = model.vae.decoder.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        tiled = np.asarray(vae.decode(model, lat)[0], dtype=np.float32)
    finally:
        handle.remove()
    assert len(calls) == 9  # 3 x 3 overlapping 256 px tiles
    assert not model.vae.use_tiling  # switched on for that call only
    # random weights make GroupNorm statistics differ per tile more than a trained VAE's do: PSNR over 28 dB
    psnr = 10 * np.log10(255**2 / np.mean((tiled - untiled) ** 2))
    assert psnr > 28, psnr
    other = np.asarray(vae.decode(model, torch.randn(1, 16, 64, 64, generator=gen) * 0.5)[0], dtype=np.float32)
    assert np.abs(tiled - untiled).mean() < 0.25 * np.abs(other - untiled).mean()
    # the encoder tiles too (diffusers' tiled encode); a random encoder's GroupNorm statistics are too global
    # for a tolerance to mean anything, so this checks the tiling itself
    calls.clear()
    handle = model.vae.encoder.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        assert vae.encode_mode(model, pix).shape == whole.shape
    finally:
        handle.remove()
    assert len(calls) == 9
