"""`image-to-lora` from the command line (in-process main(), the path app.py takes): the LoRA lands in the LoRA
folder and is listed; bad input is one line; `generate --lora` takes the file's positive-only default."""

import json
from types import SimpleNamespace

import pytest

from app.cli import main
from engine.outputs import read_png_settings
from models.z_image.i2l import tiny
from tests.i2l_files import write_picture


@pytest.fixture
def cli(tmp_path, capsys):
    def run(*args):
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run


def test_make_list_and_use(cli, tmp_path, tiny_model_json):
    tiny.write_files(tmp_path / "ComfyUI" / "models", "comfyui")  # the ComfyUI node's layout
    pictures = [str(write_picture(tmp_path / f"{i}.png", seed=i)) for i in range(2)]
    common = ["--lora-dir-z-image", str(tmp_path / "loras"), "--checkpoints", str(tmp_path / "ckpts"),
              "--comfyui-models", str(tmp_path / "ComfyUI" / "models"), "--device", "cpu"]

    shown = cli("image-to-lora", *common, "--show-files")
    assert shown.returncode == 0 and shown.stdout.count("present") == 3 and "I2L/CLIPS/DINOv3-7B" in shown.stdout

    made = cli("image-to-lora", *pictures, "--name", "ink style", *common, "--dtype", "float32")
    assert made.returncode == 0, made.stderr
    path = tmp_path / "loras" / "ink style.safetensors"
    assert made.stdout.startswith(str(path)) and "rank 8 (2 picture(s) x 4)" in made.stdout
    assert "writing the LoRA" in made.stderr and "--lora \"ink style.safetensors\"" in made.stderr

    listed = cli("loras", *common)
    assert "ink style.safetensors" in listed.stdout and "CFG positive branch only by default" in listed.stdout

    again = cli("image-to-lora", *pictures, "--name", "ink style", *common)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "exists already" in again.stderr and "never overwritten" in again.stderr

    json_path, _ = tiny_model_json
    data = json.loads(json_path.read_text())
    data["model"]["architecture"] = "z_image_base"
    base_json = tmp_path / "tiny_base.json"
    base_json.write_text(json.dumps(data))
    gen = ["generate", *common, "--model-def", str(base_json), "--model", "tiny_base", "--seed", "1", "--steps", "2",
           "--guidance", "4", "--negative-prompt", "fog", "--prompt", "a boat"]
    for suffix, expected in (("", True), (":both", None), (":0.5:positive", True)):
        out = tmp_path / f"img{suffix.replace(':', '_')}.png"
        r = cli(*gen, "--lora", f"ink style.safetensors{suffix}", "--output", str(out))
        assert r.returncode == 0, r.stderr
        settings, record = read_png_settings(out)
        assert settings.loras[0].get("positive_only") is expected
        assert record["loras"][0].get("positive_only") is expected


def test_bad_input_is_one_line(cli, tmp_path):
    common = ["--lora-dir-z-image", str(tmp_path / "loras"), "--checkpoints", str(tmp_path / "ckpts")]
    cases = [([], "no picture given"), ([str(tmp_path / "nope.png")], "file not found")]
    small = write_picture(tmp_path / "s.png", (64, 64))
    cases.append(([str(small)], "too small"))
    for images, words in cases:
        r = cli("image-to-lora", *images, "--name", "x", *common)
        assert r.returncode in (1, 2) and len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr
    ok = write_picture(tmp_path / "ok.png")
    r = cli("image-to-lora", str(ok), "--name", "x", *common, "--i2l-model", str(tmp_path / "missing.safetensors"))
    assert r.returncode == 1 and "no such file (given for the Z-Image-i2L hypernetwork, --i2l-model)" in r.stderr
    r = cli("image-to-lora", str(ok), *common)
    assert r.returncode == 2 and "give the new LoRA a name" in r.stderr
