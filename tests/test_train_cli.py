"""`python app.py train-lora`: a run from flags to a LoRA in the folder, bad input as one line with the right
exit code, and Ctrl-C writing a resumable checkpoint."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.cli import main
from tests.train_data import MODEL, two_images, write_adapter

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_json, tiny_models):
    root = tmp_path_factory.mktemp("traincli")
    return (tiny_model_json[0], two_images(root / "data"),
            write_adapter(root / "adapter.safetensors", tiny_models["transformer"]))


def flags(files, tmp_path, *extra):
    model_json, data, adapter = files
    return ["train-lora", "--model-def", str(model_json), "--lora-dir-z-image", str(tmp_path / "loras"),
            "--images", str(data), "--name", "cli", "--model", MODEL, "--trigger", "zzt", "--rank", "2",
            "--resolution", "256", "--save-every", "0", "--sample-every", "0", "--adapter", str(adapter),
            "--training-dir", str(tmp_path / "training"), *extra]


def test_train_lora_writes_the_lora_and_prints_its_path(files, tmp_path, capsys):
    assert main(flags(files, tmp_path, "--steps", "2", "--sample-prompt", "zzt on a table")) == 0
    out, err = capsys.readouterr()
    path, name, summary = out.strip().split("\t")
    assert Path(path) == tmp_path / "loras" / "cli.safetensors" and Path(path).is_file() and name == "cli.safetensors"
    assert summary.startswith("2 steps, final loss ")
    assert "step 2/2" in err and "samples at step 2" in err
    assert (tmp_path / "training" / "cli" / "samples" / "step000002_0.png").is_file()


@pytest.mark.parametrize("extra,code,message", [
    (["--lr", "abc", "--steps", "1"], 2, "learning rate 'abc' is not a number"),
    (["--steps", "0"], 2, "steps 0 is out of range"),
    (["--rank", "0", "--steps", "1"], 2, "rank 0 is out of range"),
    (["--steps", "x"], 2, "argument --steps: invalid int value"),
    (["--resolution", "300", "--steps", "1"], 2, "resolution 300: use multiples of 32"),
])
def test_bad_flags_are_one_line(files, tmp_path, capsys, extra, code, message):
    assert exit_code(flags(files, tmp_path, *extra)) == code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "training").exists()  # nothing was started


def exit_code(args) -> int:
    try:
        return main(args)
    except SystemExit as done:  # argparse's own errors
        return done.code


def test_an_empty_folder_exits_1_with_the_reason(files, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = flags(files, tmp_path, "--steps", "1")
    args[args.index("--images") + 1] = str(tmp_path / "empty")
    assert main(args) == 1
    assert "holds no images" in capsys.readouterr().err


def test_ctrl_c_writes_a_checkpoint_and_resume_continues(files, tmp_path):
    """A real process: SIGINT while training -> a checkpoint, exit code 130, then --resume finishes the run."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "app.py"), *flags(files, tmp_path, "--steps", "100000")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen, deadline = "", time.monotonic() + 240
    while "step 3/" not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stderr.read(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, seen + err
    assert "stopped at step" in err and "--resume" in err
    from engine.training import checkpoint as C

    step = C.load(tmp_path / "training" / "cli" / "checkpoint.safetensors").step
    assert step >= 3
    assert main(flags(files, tmp_path, "--steps", str(step + 1), "--resume")) == 0
    assert (tmp_path / "loras" / "cli.safetensors").is_file()

