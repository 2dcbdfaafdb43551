"""The command line, run as a user would run it (subprocesses), on the tiny model."""

import subprocess
import sys

from engine.registry import ROOT


def run(*args, cwd=ROOT):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_generate_then_restore_from_png(tiny_model_json, tmp_path):
    json_path, _ = tiny_model_json
    out = tmp_path / "out"
    r = run("generate", "--model-def", str(json_path), "--model", "z_image_tiny_test", "--prompt", "a test",
            "--seed", "5", "--steps", "3", "--count", "2", "--output", str(out))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and "seed 5" in lines[0] and "seed 6" in lines[1]
    first = lines[0].split("\t")[0]
    r2 = run("generate", "--model-def", str(json_path), "--settings-from", first, "--output",
             str(tmp_path / "again.png"))
    assert r2.returncode == 0, r2.stderr
    from PIL import Image
    import numpy as np

    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(tmp_path / "again.png")))
    shown = run("settings", first)
    assert '"prompt": "a test"' in shown.stdout and '"seed": 5' in shown.stdout


def test_bad_arguments_exit_2_with_one_line(tiny_model_json, tmp_path):
    json_path, _ = tiny_model_json
    for args, words in [
        (["--width", "1000"], "multiple of 16"),
        (["--steps", "0"], "steps 0"),
        (["--guidance", "-2"], "guidance"),
        (["--width", "abc"], "invalid int value"),
        (["--model", "nope"], "unknown model type"),
    ]:
        base = ["generate", "--model-def", str(json_path), "--prompt", "x", "--output", str(tmp_path / "o")]
        if "--model" not in args:
            base += ["--model", "z_image_tiny_test"]
        r = run(*base, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_models_lists_types_and_files(tiny_model_json):
    json_path, folder = tiny_model_json
    r = run("models", "--model-def", str(json_path), "--checkpoints", str(folder / "no_ckpts"))
    assert r.returncode == 0, r.stderr
    assert "z_image_base" in r.stdout and "will download" in r.stdout
    assert f"present  {folder / 'transformer.safetensors'}" in r.stdout.replace(str(folder.resolve()), str(folder))


def test_missing_files_offline_message(tmp_path):
    r = run("generate", "--model", "z_image", "--prompt", "x", "--checkpoints", str(tmp_path / "ck"))
    assert r.returncode == 1
    assert "ZImageTurbo_bf16.safetensors" in r.stderr and "12.3 GB" in r.stderr and "Traceback" not in r.stderr
