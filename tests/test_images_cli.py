"""Images in from the command line: img2img/inpaint with the inputs kept by content (PNG reproducible after the
originals are gone, warnings when a stored input is missing or changed), the hires fix, the upscale command."""

import json

import numpy as np
from PIL import Image

from engine.outputs import read_png_settings
from tests import upscaler_files as UF
from tests.test_cli import run


def model_args(tiny_model_json):
    return ["--model-def", str(tiny_model_json[0]), "--model", "z_image_tiny_test"]


def test_inpaint_png_reproduces_from_its_stored_inputs(tiny_model_json, tmp_path):
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((240, 272, 3)) * 255).astype(np.uint8)).save(photo)
    m = np.zeros((240, 272), np.uint8)
    m[40:120, 60:200] = 255
    Image.fromarray(m).save(mask)
    out = tmp_path / "out"
    r = run("generate", *model_args(tiny_model_json), "--prompt", "a door", "--seed", "3", "--steps", "2",
            "--init-image", str(photo), "--mask", str(mask), "--strength", "0.9", "--mask-blur", "2",
            "--outpaint", "0,16,0,0", "--output", str(out))
    assert r.returncode == 0, r.stderr
    first = r.stdout.split("\t")[0]
    settings, record = read_png_settings(first)
    assert Image.open(first).size == (288, 240)
    assert settings.inputs["init_image"]["name"] == "photo.png" and settings.outpaint == [0, 16, 0, 0]
    stored = out / "inputs" / f"{settings.inputs['init_image']['sha256']}.png"
    assert stored.read_bytes() == photo.read_bytes() and settings.init_image == str(stored.resolve())
    assert record["passes"][0]["steps"] == 2
    photo.unlink(), mask.unlink()  # the originals are gone: the PNG still reproduces
    r2 = run("generate", "--model-def", str(tiny_model_json[0]), "--settings-from", first, "--output",
             str(tmp_path / "again" / "again.png"))
    assert r2.returncode == 0, r2.stderr
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(tmp_path / "again" / "again.png")))

    stored.write_bytes(b"changed")  # the stored init image changed, the mask's copy is gone
    (out / "inputs" / f"{settings.inputs['mask']['sha256']}.png").unlink()
    r3 = run("settings", first)
    assert json.loads(r3.stdout)["settings"]["inputs"]["mask"]["name"] == "mask.png"
    r4 = run("generate", "--model-def", str(tiny_model_json[0]), "--settings-from", first, "--output",
             str(tmp_path / "third" / "third.png"))
    assert "the init image photo.png was changed in the input store" in r4.stderr
    assert "the mask mask.png is missing" in r4.stderr
    assert r4.returncode == 0, r4.stderr  # dropped: a text-to-image (the outpaint margins went with the picture)


def test_hires_from_the_command_line(tiny_model_json, tmp_path):
    r = run("generate", *model_args(tiny_model_json), "--prompt", "a hill", "--seed", "1", "--steps", "2",
            "--hires", "1.5", "--hires-strength", "0.5", "--output", str(tmp_path / "h.png"))
    assert r.returncode == 0, r.stderr
    settings, record = read_png_settings(tmp_path / "h.png")
    assert Image.open(tmp_path / "h.png").size == (384, 384) and settings.upscale == 1.5
    assert [p["size"] for p in record["passes"]] == [[256, 256], [384, 384]]


def test_upscale_command(tmp_path):
    ups = tmp_path / "ups"
    UF.write(ups, "RealESRGAN_x4plus.safetensors", UF.realesrgan_x4())
    (ups / "old.pth").write_bytes(b"\x80\x04")
    (ups / "broken.safetensors").write_bytes(b"\x00" * 40)
    photo = tmp_path / "small.png"
    Image.fromarray((np.random.default_rng(1).random((60, 80, 3)) * 255).astype(np.uint8)).save(photo)
    r = run("upscale", str(photo), "--scale", "2", "--upscaler", "RealESRGAN_x4plus", "--upscaler-dir", str(ups),
            "--output", str(tmp_path / "big.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "big.png").size == (160, 120) and "160x120" in r.stdout
    settings, record = read_png_settings(tmp_path / "big.png")
    assert (settings.strength, settings.upscaler, settings.upscale) == (0.0, "RealESRGAN_x4plus", 2.0)
    assert record["passes"] == [] and record["files"] == {}  # no diffusion model was loaded
    listed = run("upscale", str(photo), "--list", "--upscaler-dir", str(ups))
    assert listed.stdout.split() == ["RealESRGAN_x4plus.safetensors", "broken.safetensors"]
    bad = run("upscale", str(photo), "--upscaler", "old.pth", "--upscaler-dir", str(ups))
    assert bad.returncode == 2 and "pickles" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    broken = run("upscale", str(photo), "--upscaler", "broken", "--upscaler-dir", str(ups),
                 "--output", str(tmp_path / "x.png"))
    assert broken.returncode == 1 and "broken.safetensors: not a readable safetensors file" in broken.stderr
