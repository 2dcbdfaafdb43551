"""Upscaler models through spandrel: tiny ESRGAN-architecture files in the real key layouts are detected and run
(tiled, matching an untiled run); pickles, damaged files and unknown architectures are refused in one line."""

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import ModelFileError, SettingsError
from engine.images.tiles import Blender, Tiling, ramp
from engine.images.upscalers import Upscalers, load_file, run_tiled, upscaled
from tests import upscaler_files as UF


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("upscalers")
    UF.write(folder, "RealESRGAN_x4plus.safetensors", UF.realesrgan_x4())
    UF.write(folder / "community", "4x-UltraSharp.safetensors", UF.esrgan_old_x4())
    return folder


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    a = (rng.random((70, 90, 3)) * 255).astype(np.uint8)
    a[20:50, 30:70] = (250, 200, 10)
    return Image.fromarray(a)


@pytest.mark.parametrize("name", ["RealESRGAN_x4plus", "community/4x-UltraSharp.safetensors"])
def test_esrgan_files_are_detected_and_run(folder, photo, name):
    ups = Upscalers(folder)
    assert ups.names() == ["RealESRGAN_x4plus.safetensors", "community/4x-UltraSharp.safetensors"]
    model = ups.load(name)
    assert model.architecture.id == "ESRGAN" and model.scale == 4 and model.purpose == "SR"
    out = ups.upscale(photo, name)
    assert out.size == (360, 280)
    x = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.inference_mode():
        whole = (model(x).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255)
    tiled = np.asarray(run_tiled(model, photo, torch.device("cpu"), tile=48, overlap=16), dtype=np.float32)
    assert np.abs(tiled - whole).mean() < 1.0  # tiles (6 of them here) blend into the untiled picture
    assert np.abs(np.asarray(out, dtype=np.float32) - whole).max() <= 1  # the picture fits one default tile


def test_model_upscale_to_another_factor(folder, photo):
    ups = Upscalers(folder)
    out = upscaled(photo, 2.0, "RealESRGAN_x4plus", ups)
    assert out.size == (180, 140)  # the model's 4x, then lanczos to 2x
    assert upscaled(photo, 1.5, "lanczos", None).size == (135, 105)


def test_refusals_name_the_file_and_the_reason(folder, tmp_path):
    ups = Upscalers(tmp_path)
    (tmp_path / "RealESRGAN_x4plus.pth").write_bytes(b"\x80\x04pickle")
    with pytest.raises(SettingsError, match=r"\.pth files are pickles"):
        ups.resolve("RealESRGAN_x4plus.pth")
    with pytest.raises(SettingsError, match="inside the upscaler folder"):
        ups.resolve("../outside.safetensors")
    with pytest.raises(SettingsError, match="is not in .*built in: lanczos"):
        ups.resolve("missing")
    (tmp_path / "cut.safetensors").write_bytes((folder / "RealESRGAN_x4plus.safetensors").read_bytes()[:300])
    with pytest.raises(ModelFileError, match="cut.safetensors: not a readable safetensors file"):
        load_file(tmp_path / "cut.safetensors")
    UF.write(tmp_path, "mystery.safetensors", {"encoder.weight": torch.zeros(4, 4)})
    with pytest.raises(ModelFileError, match="mystery.safetensors: unknown upscaler architecture"):
        load_file(tmp_path / "mystery.safetensors")
    sd = UF.realesrgan_x4()
    sd["conv_body.weight"] = torch.zeros(3, 3, 3, 3)
    UF.write(tmp_path, "broken.safetensors", sd)
    with pytest.raises(ModelFileError, match="broken.safetensors: looks like an upscaler but its weights"):
        load_file(tmp_path / "broken.safetensors")


def test_tiles_cover_and_blend_without_seams():
    boxes = Tiling(64, 16).boxes(150, 100)
    assert all(r - l == 64 and b - t == 64 for l, t, r, b in boxes)
    covered = np.zeros((100, 150), int)
    for l, t, r, b in boxes:
        covered[t:b, l:r] += 1
    assert covered.min() >= 1 and boxes[-1][2:] == (150, 100)
    flat = np.full((100, 150, 3), 77.0, np.float32)
    blender = Blender(150, 100, 16)
    for l, t, r, b in boxes:
        blender.add(flat[t:b, l:r], (l, t, r, b))
    assert np.allclose(blender.array(), 77.0)  # weights sum to a constant picture everywhere
    w = ramp((0, 0, 64, 64), 150, 100, 16)
    assert w[0, 0] == 1 and w[10, 63] < 0.1  # the picture's border keeps full weight, inner edges fade
