"""LoRAs from the command line: presets, --lora, the `loras` listing, and restoring a PNG whose LoRA is gone.
(In-process `main()`, the same code path as app.py, to keep the suite fast.)"""

import json
from types import SimpleNamespace

from app.cli import main
from engine.outputs import read_png_settings
from models.z_image.lora import linear_shapes
from tests.lora_files import write_style


def test_lora_flags_presets_listing_and_restore(tiny_model_json, tiny_models, tmp_path, capsys):
    def run(*args):
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    json_path, _ = tiny_model_json
    loras = tmp_path / "loras"
    write_style(loras / "styles" / "ink.safetensors", linear_shapes(tiny_models["transformer"]), "kohya")
    common = ["--lora-dir-z-image", str(loras)]

    saved = run("loras", *common, "--save-preset", "ink", "--lora", "styles/ink.safetensors:0.8",
                "--preset-prompt", "ink drawing")
    assert saved.returncode == 0, saved.stderr
    listed = run("loras", *common)
    assert "styles/ink.safetensors" in listed.stdout and "LoRA, rank 4, 37 layers" in listed.stdout
    assert "presets: ink" in listed.stdout

    gen = ["generate", *common, "--model-def", str(json_path), "--model", "z_image_tiny_test", "--seed", "1",
           "--steps", "2"]
    r = run(*gen, "--prompt", "a boat", "--lora-preset", "ink", "--lora", "styles/ink.safetensors:1.0,0.5",
            "--output", str(tmp_path / "a.png"))
    assert r.returncode == 0, r.stderr
    settings, record = read_png_settings(tmp_path / "a.png")
    assert settings.prompt == "a boat, ink drawing"
    assert settings.loras == [{"name": "styles/ink.safetensors", "strength": 1.0, "schedule": [1.0, 0.5]}]
    assert record["loras"][0]["file"] == "ink.safetensors" and len(record["loras"][0]["sha256"]) == 64

    (loras / "styles" / "ink.safetensors").unlink()
    again = run(*gen, "--settings-from", str(tmp_path / "a.png"), "--output", str(tmp_path / "b.png"))
    assert again.returncode == 0, again.stderr
    assert "'styles/ink.safetensors' used for this image is not in the LoRA folder" in again.stderr
    assert read_png_settings(tmp_path / "b.png")[0].loras == []

    bad = run(*gen, "--prompt", "x", "--lora", "../ink.safetensors", "--output", str(tmp_path / "c.png"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "'..'" in bad.stderr
    assert json.loads((loras / "presets" / "ink.json").read_text())["prompt"] == "ink drawing"
