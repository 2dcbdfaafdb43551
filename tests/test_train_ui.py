"""The Train panel: built into the page, dataset upload and caption editing, a run streaming progress, loss and
samples to the page, Stop from the same session, bad input as a readable error, and "Use it"."""

from pathlib import Path

import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from app.web.page import build_ui  # noqa: E402
from tests.train_data import MODEL, two_images, write_adapter  # noqa: E402


class Request:
    session_hash = "trainer-session"


@pytest.fixture
def ui(engine, tmp_path, monkeypatch):
    monkeypatch.setitem(engine.lora_dirs, "z_image", tmp_path / "loras")
    demo = build_ui(engine, output_dir=tmp_path / "out")
    train = demo.zimage_app.train_ui
    train.training_dir = tmp_path / "training"
    yield train
    engine.apply_loras(engine.settings_for(MODEL, prompt="x"))


def values(ui, data, adapter, **kw):
    v = {"train_name": "ui", "train_images": str(data), "train_model": MODEL, "train_trigger": "zzt",
         "train_steps": 4.0, "train_rank": 2.0, "train_alpha": None, "train_lr": "1e-2", "train_batch": 1.0,
         "train_resolutions": [256], "train_save_every": 2.0, "train_sample_every": 0.0, "train_prompts": "zzt",
         "train_seed": 42.0, "train_resume": False, "train_adapter": str(adapter), "train_timesteps": "weighted",
         "train_refiners": False, "train_checkpointing": True, "train_optimizer": "auto", "train_base": "auto"}
    return {**v, **kw}


@pytest.fixture
def inputs(tmp_path, tiny_models):
    return two_images(tmp_path / "data"), write_adapter(tmp_path / "adapter.safetensors", tiny_models["transformer"])


def test_trainable_types_are_offered(ui):
    types = ui.types()
    assert {MODEL, "z_image", "z_image_base"} <= set(types)
    assert not any("control" in t or "twinflow" in t for t in types)


def test_upload_then_edit_captions(ui, tmp_path, inputs):
    data, _ = inputs
    files = [str(data / "img0.png"), str(data / "img0.txt"), str(data / "img1.png"), str(tmp_path / "x.exe")]
    (tmp_path / "x.exe").write_bytes(b"MZ")
    out = ui.on_upload(files, "my set")
    folder = ui.training_dir / "datasets" / "my set"
    assert out["train_images"] == str(folder.resolve())
    assert sorted(p.name for p in folder.iterdir()) == ["img0.png", "img0.txt", "img1.png"]  # no .exe
    assert out["train_captions"] == [["img0.png", "a red card with a white bar, [trigger]"], ["img1.png", ""]]
    saved = ui.on_save_captions(str(folder), [["img0.png", "a red card"], ["img1.png", "a blue card, [trigger]"]])
    assert saved["train_captions"] == [["img0.png", "a red card"], ["img1.png", "a blue card, [trigger]"]]
    assert (folder / "img1.txt").read_text(encoding="utf-8") == "a blue card, [trigger]\n"
    with pytest.raises(gr.Error, match="LoRA name"):
        ui.on_upload(files, "../up")


def test_a_run_streams_progress_loss_samples_then_use_it(ui, inputs):
    data, adapter = inputs
    frames = list(ui.start(values(ui, data, adapter), Request()))
    last = frames[-1]
    assert last["train_result"] == "ui.safetensors" and "**Done:** `ui.safetensors`" in last["train_info"]
    assert list(last["train_loss"]["step"]) == [1, 2, 3, 4]
    (image, caption), = last["train_samples"]  # a cache copy of the sample's PNG (the training folder is not served)
    from gradio.utils import get_upload_folder

    samples = list((ui.training_dir / "ui").rglob("*.png"))
    assert Path(image).resolve().is_relative_to(Path(get_upload_folder()).resolve()) and caption == "step 4: zzt"
    assert len(samples) == 1 and Path(image).read_bytes() == samples[0].read_bytes()
    assert Image.open(image).format == "PNG"
    assert sum("train_samples" in f for f in frames) == 2  # when the samples came, and with the result
    assert any("Step **4/4**" in f.get("train_info", "") for f in frames)
    used = ui.use_it("ui.safetensors", [["other.safetensors", 0.5, "", False]])
    assert used["loras"] == [["other.safetensors", 0.5, "", False], ["ui.safetensors", 1.0, "", False]]
    assert "ui.safetensors" in used["lora_pick"]["choices"]


def test_stop_from_the_same_session_keeps_a_checkpoint(ui, inputs):
    data, adapter = inputs
    frames = []
    for frame in ui.start(values(ui, data, adapter, train_steps=400.0, train_save_every=0.0), Request()):
        frames.append(frame)
        if "Step **" in frame.get("train_info", "") and len(frames) > 2:
            ui.on_stop_training(Request())
    assert "**Stopped.** stopped at step" in frames[-1]["train_info"]
    assert (ui.training_dir / "ui" / "checkpoint.safetensors").is_file()


def test_bad_input_is_a_readable_error(ui, inputs):
    data, adapter = inputs
    with pytest.raises(gr.Error, match="learning rate 'fast' is not a number"):
        list(ui.start(values(ui, data, adapter, train_lr="fast"), Request()))
    with pytest.raises(gr.Error, match="nothing-here: no such folder"):
        list(ui.start(values(ui, data, adapter, train_images=str(data.parent / "nothing-here")), Request()))


def test_a_run_waiting_for_the_gpu_says_where_it_stands(ui, inputs, monkeypatch):
    """Training behind another job (a generation) shows its place in line, then runs."""
    import threading

    import app.web.train_handlers as train_module

    data, adapter = inputs
    gate = threading.Event()
    ahead = ui.jobs.submit(lambda ctx: gate.wait(30), owner="someone else")
    monkeypatch.setattr(train_module, "QUEUE_POLL", 0.01)
    frames = []
    for frame in ui.start(values(ui, data, adapter), Request()):
        frames.append(frame)
        if "Queued" in frame.get("train_info", ""):
            gate.set()  # the other job ends: training starts
    assert any(f.get("train_info", "").startswith("Queued: 1 job ahead of yours") for f in frames)
    assert ahead.outcome() is True and frames[-1]["train_result"] == "ui.safetensors"

