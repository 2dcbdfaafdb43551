"""The web UI: served on a free port with the tiny model, driven by gradio_client and by the handlers."""

import json
import socket
from pathlib import Path
import threading
import time

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402
from gradio_client.utils import Status  # noqa: E402

from engine.outputs import read_png_settings  # noqa: E402
from app.web.handlers import AppUI  # noqa: E402
from app.web.page import build_ui  # noqa: E402
from app.web.fields import FIELDS  # noqa: E402
from tests.test_lora_engine import lora_engine  # noqa: E402,F401  (fixture: a LoRA folder for the tiny model)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("ui_out")
    demo = build_ui(engine, output_dir=out)
    port = free_port()
    demo.queue(default_concurrency_limit=1).launch(server_port=port, prevent_thread_lock=True,
                                                   allowed_paths=[str(out)], quiet=True)
    yield demo, f"http://127.0.0.1:{port}/", out
    demo.close()


def client(url, **kw):
    return Client(url, verbose=False, **kw)


def settings_json(**kw):
    return json.dumps(kw)


def test_api_generates_png_with_settings(server):
    _, url, _ = server
    paths = client(url).predict(prompt="a lighthouse", model_type="z_image_tiny_test",
                                settings=settings_json(seed=9, width=256, height=320, num_inference_steps=2),
                                api_name="/txt2img")
    assert len(paths) == 1
    assert Image.open(paths[0]).size == (256, 320)
    settings, _ = read_png_settings(paths[0])
    assert (settings.prompt, settings.seed) == ("a lighthouse", 9)


def test_bad_input_is_a_clear_error_and_app_keeps_serving(server):
    _, url, _ = server
    c = client(url)
    with pytest.raises(Exception, match="width 1000 is not a multiple of 16"):
        c.predict(prompt="x", model_type="z_image_tiny_test", settings=settings_json(width=1000), api_name="/txt2img")
    with pytest.raises(Exception, match="unknown model type"):
        c.predict(prompt="x", model_type="nope", api_name="/txt2img")
    assert c.predict(prompt="x", model_type="z_image_tiny_test", settings=settings_json(num_inference_steps=1),
                     api_name="/txt2img")


def test_second_client_waits_in_queue(server):
    _, url, _ = server
    long = settings_json(num_inference_steps=50, width=448, height=448)
    first = client(url).submit(prompt="one", model_type="z_image_tiny_test", settings=long, api_name="/txt2img")
    time.sleep(1.0)
    second = client(url).submit(prompt="two", model_type="z_image_tiny_test", settings=long, api_name="/txt2img")
    ranks = []
    deadline = time.time() + 60
    while not first.done() and time.time() < deadline:
        status = second.status()
        if status.code == Status.IN_QUEUE and status.rank is not None:
            ranks.append(status.rank)
        time.sleep(0.2)
    assert ranks and min(ranks) == 0  # the second request waited, first in line
    assert first.result() and second.result()


def test_stop_mid_run_then_ready(server):
    demo, url, _ = server
    c = client(url)
    job = c.submit(prompt="long", model_type="z_image_tiny_test",
                   settings=settings_json(num_inference_steps=50, width=1024, height=1024), api_name="/txt2img")
    deadline = time.time() + 60
    while demo.zimage_app.jobs.running is None and time.time() < deadline:
        time.sleep(0.1)
    started = time.time()
    assert c.predict(api_name="/stop") is True
    with pytest.raises(Exception, match="stopped"):
        job.result()
    assert time.time() - started < 20  # within a step or so, not after 50 steps
    assert c.predict(prompt="after", model_type="z_image_tiny_test", settings=settings_json(num_inference_steps=1),
                     api_name="/txt2img")


def test_stop_from_another_session_does_not_stop(server):
    demo, url, _ = server
    job = client(url).submit(prompt="mine", model_type="z_image_tiny_test",
                             settings=settings_json(num_inference_steps=20), api_name="/txt2img")
    while demo.zimage_app.jobs.running is None and not job.done():
        time.sleep(0.05)
    assert client(url).predict(api_name="/stop") is False
    assert job.result()


def test_page_and_api_jobs_take_turns_on_the_gpu(server):
    """A page job and an API job at once run one after the other on the engine's queue, each with its own
    settings and images."""
    demo, url, _ = server
    app = demo.zimage_app
    before = len(app.jobs.finished())
    page_out = []
    values = values_for(app, "z_image_tiny_test", prompt="from the page", seed=3, num_inference_steps=40)
    page = threading.Thread(target=lambda: page_out.extend(
        app.generate("z_image_tiny_test", values, request=FakeRequest(), progress=FakeProgress())))
    page.start()
    deadline = time.time() + 60
    while app.jobs.running is None and time.time() < deadline:
        time.sleep(0.02)
    paths = client(url).predict(prompt="from the api", model_type="z_image_tiny_test",
                                settings=settings_json(seed=5, num_inference_steps=2), api_name="/txt2img")
    page.join(60)
    jobs = app.jobs.finished()[before:]
    assert [j.state for j in jobs] == ["done", "done"]
    first, second = sorted(jobs, key=lambda j: j.started)
    assert first.owner == FakeRequest.session_hash and first.finished <= second.started  # one after the other
    api_settings, _ = read_png_settings(paths[0])
    page_settings, _ = read_png_settings(gallery(page_out[-1])[0][0])
    assert (api_settings.prompt, api_settings.seed) == ("from the api", 5)
    assert (page_settings.prompt, page_settings.seed, page_settings.num_inference_steps) == ("from the page", 3, 40)


# ---- handlers without a server ---------------------------------------------------------------------

class FakeProgress:
    def __init__(self):
        self.calls = []

    def __call__(self, value, desc=None):
        self.calls.append((value, desc))


class FakeRequest:
    session_hash = "test-session"
    username = None


def gallery(frame) -> list:
    """The gallery value of a frame: [(picture, caption)], newest first."""
    value = frame["gallery"]
    return value["value"] if isinstance(value, dict) else value


def previews(frames) -> list:
    return [f["preview"]["value"] for f in frames if isinstance(f.get("preview"), dict)
            and isinstance(f["preview"].get("value"), Image.Image)]


def step_texts(frames) -> list:
    """The status area's "Step i/n" lines, in order."""
    import re

    return [m.group(0) for f in frames if isinstance(f.get("info"), str)
            for m in [re.search(r"Step \d+/\d+( of image run \d+/\d+)?", f["info"])] if m]


def values_for(app, model_type, **changes):
    """The page's values by field name, as the page sends them."""
    s = app.engine.settings_for(model_type, **changes)
    return {spec.name: getattr(s, spec.name) for spec in FIELDS}


def test_a_generate_behind_another_job_shows_its_place_in_line_then_runs(engine, tmp_path, monkeypatch):
    import threading

    import app.web.handlers as page_module

    monkeypatch.setattr(page_module, "QUEUE_POLL", 0.01)
    app = AppUI(engine, tmp_path / "out")
    gate = threading.Event()
    ahead = app.jobs.submit(lambda ctx: gate.wait(30), owner="someone else")
    frames = app.generate("z_image_tiny_test", values_for(app, "z_image_tiny_test", prompt="a cat", seed=1,
                                                           num_inference_steps=1), request=FakeRequest())
    seen = []
    for frame in frames:
        seen.append(frame)
        if "Queued" in str(frame.get("info")):
            gate.set()  # the other job ends: this one runs
    queued = next(f for f in seen if "Queued" in str(f.get("info")))
    assert "1 job ahead of yours" in queued["info"] and queued["generate"]["value"] == "Queued"
    assert ahead.outcome() is True and len(gallery(seen[-1])) == 1


def test_generate_streams_progress_and_previews(engine, tmp_path, monkeypatch):
    import app.web.handlers as page_module

    monkeypatch.setattr(page_module, "PREVIEW_INTERVAL", 0.0)  # as with a real model, whose steps take seconds
    monkeypatch.setattr(page_module, "PROGRESS_INTERVAL", 0.0)
    app = AppUI(engine, tmp_path / "out")
    engine.unload()  # so the job loads it (a stage of its own)
    steps = list(app.generate("z_image_tiny_test", values_for(app, "z_image_tiny_test", prompt="a cat", seed=1,
                                                                 num_inference_steps=4, count=2),
                              request=FakeRequest()))
    assert len(previews(steps)) == 8  # a live preview every step of both runs
    assert "Starting" in steps[0]["info"] and steps[0]["stop"]["visible"]  # the first update comes before loading
    assert step_texts(steps) == [f"Step {i}/4 of image run {r}/2" for r in (1, 2) for i in range(1, 5)]
    assert [f["generate"]["value"].split(" ·")[0] for f in steps if "Step" in str(f.get("generate"))] == [
        f"Step {i}/8" for i in range(1, 9)]  # the button counts the job's steps, like the status area
    stages = [f["info"] for f in steps if isinstance(f.get("info"), str)]
    assert any("Loading the model" in t for t in stages) and any("Decoding" in t for t in stages)
    assert any("Saving" in t for t in stages) and any("left" in t for t in stages)  # stages named, time left
    last = steps[-1]
    assert len(gallery(last)) == 2 and last["used"]["seed"] == 2  # the last image's (seed 1 + run 1)
    assert last["preview"]["visible"] is False and last["generate"]["value"] == "Generate"  # no stale preview
    assert Image.open(gallery(last)[0][0]).size == (256, 256)
    remembered = next(s["memory"] for s in steps if "memory" in s)  # for the browser's local storage
    assert remembered["z_image_tiny_test"]["prompt"] == "a cat"
    import hashlib  # this browser's history names each output by file and content hash

    for entry in last["history"]:
        assert hashlib.sha256((tmp_path / "out" / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    monkeypatch.setattr(page_module, "PREVIEW_INTERVAL", 3600.0)
    monkeypatch.setattr(page_module, "PROGRESS_INTERVAL", 3600.0)
    quick = list(app.generate("z_image_tiny_test", values_for(app, "z_image_tiny_test", prompt="a cat", seed=1,
                                                                 num_inference_steps=4), request=FakeRequest(),
                              history=last["history"]))
    assert len(previews(quick)) == 1  # fast steps: only the last preview is sent
    assert step_texts(quick) == ["Step 4/4"]  # and the last progress update
    assert len(gallery(quick[-1])) == 3 and len(quick[-1]["history"]) == 3  # the new image first, then the others


def test_out_of_gpu_memory_frees_memory_says_what_to_try_and_keeps_serving(engine, tmp_path, monkeypatch):
    import torch

    from engine.images.preprocess import hub

    app = AppUI(engine, tmp_path / "out")
    values = values_for(app, "z_image_tiny_test", prompt="a cat", seed=1, num_inference_steps=2)
    released = []
    monkeypatch.setattr(hub, "release", lambda: released.append(True))

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine, "generate", out_of_memory)
    with pytest.raises(gr.Error, match="Out of GPU memory at 256x256.*smaller size.*lower memory profile"):
        list(app.generate("z_image_tiny_test", values, request=FakeRequest(), progress=FakeProgress()))
    assert engine.model is None and released  # the model and the preprocessors were let go
    monkeypatch.undo()
    out = list(app.generate("z_image_tiny_test", values, request=FakeRequest(), progress=FakeProgress()))
    assert Image.open(gallery(out[-1])[0][0]).size == (256, 256)  # the next job runs


def test_capabilities_decide_visible_controls(engine, tmp_path):
    app = AppUI(engine, tmp_path)
    def visible(model_type):
        updates = app.field_updates(engine.settings_for(model_type))
        return {n for n, u in updates.items() if u["visible"]}

    assert "guidance_scale" in visible("z_image_base") and "guidance_scale" not in visible("z_image")
    assert "cfg_truncation" in visible("z_image_base") and "cfg_truncation" not in visible("z_image")
    assert "flow_shift" not in visible("z_image_twinflow_turbo")
    steps = app.field_updates(engine.settings_for("z_image_base"))["num_inference_steps"]
    assert steps["maximum"] == engine.registry.handler("z_image_base").capabilities("z_image_base").step_range[1]


def test_switching_model_applies_defaults_then_remembered(engine, tmp_path):
    from app.web import memory

    app = AppUI(engine, tmp_path)
    base = app.on_model("z_image_base")
    assert base["guidance_scale"]["value"] == 4.0
    store = memory.remember({}, engine.settings_for("z_image_base", prompt="kept", guidance_scale=6.5), app.types)
    again = app.on_model("z_image_base", "", store)
    assert again["guidance_scale"]["value"] == 6.5 and again["prompt"]["value"] == "kept"
    typing = app.on_model("z_image_base", "what I am writing", store)
    # the prompt box is left alone (typing after the switch was sent is not overwritten); the rest applies
    assert "prompt" not in typing and typing["guidance_scale"]["value"] == 6.5
    assert "prompt" not in app.on_model("z_image_base")  # another browser: nothing remembered, nothing replaced


def test_restore_every_setting_from_png(engine, tmp_path):
    app = AppUI(engine, tmp_path)
    s = engine.settings_for("z_image_tiny_test", prompt="restore me", seed=77, num_inference_steps=3, width=320)
    path = engine.save(engine.generate(s), tmp_path / "png")[0]
    updates = app.on_restore(str(path))
    assert updates["model_type"]["value"] == "z_image_tiny_test"
    restored = {f.name: updates[f.name]["value"] for f in FIELDS}
    assert restored["prompt"] == "restore me" and restored["seed"] == 77 and restored["width"] == 320
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(gr.Error, match="holds no settings"):
        app.on_restore(str(plain))


def test_missing_files_download_then_generate(engine, tiny_model_json, tmp_path, monkeypatch):
    """A type whose files are on the 'hub' only: generating downloads them (tqdm progress), then generates."""
    import shutil

    import huggingface_hub
    from tqdm import tqdm

    from engine.engine import Engine
    from engine.weights.files import FileLocator
    from engine.registry import Registry
    from models import families

    _, folder = tiny_model_json
    hub = "https://huggingface.co/test/tiny/resolve/main/"
    model_json = tmp_path / "hubtiny.json"
    model_json.write_text(json.dumps({"model": {
        "architecture": "z_image", "URLs": hub + "transformer.safetensors",
        "text_encoder_URLs": hub + "text_encoder.safetensors", "vae_URLs": hub + "vae.safetensors",
        "tokenizer": str(folder / "tokenizer")}, "resolution": "256x256"}))
    fetched = []

    def fake_download(repo, filename, revision, local_dir, tqdm_class=tqdm, **kw):
        with tqdm_class(total=3, desc=filename) as bar:
            for _ in range(3):
                bar.update(1)
        fetched.append(filename)
        target = local_dir / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / filename, target)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    eng = Engine(Registry(families(), extra_files=[model_json]), FileLocator(tmp_path / "ckpts"))
    app = AppUI(eng, tmp_path / "out")
    assert "to download" in app.describe("hubtiny")
    out = list(app.generate("hubtiny", values_for(app, "hubtiny", prompt="x", num_inference_steps=1),
                            request=FakeRequest(), progress=FakeProgress()))
    assert sorted(fetched) == ["text_encoder.safetensors", "transformer.safetensors", "vae.safetensors"]
    assert len(gallery(out[-1])) == 1
    assert "present" in app.describe("hubtiny")


def test_share_and_listen_warnings(tiny_model_json, monkeypatch, capsys, tmp_path):
    import gradio.networking

    from app.cli import build_parser
    from app.web.launch import launch

    monkeypatch.setattr(gradio.networking, "setup_tunnel", lambda **kw: "https://fake-share.gradio.live")
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["--model-def", str(tiny_model_json[0]), "--share",
                                      "--server-port", str(free_port())])
    demo = launch(args, block=False)
    try:
        assert demo.share_url == "https://fake-share.gradio.live"
        assert "WARNING" in capsys.readouterr().err
        assert any(getattr(b, "elem_id", None) == "exposed-warning" for b in demo.blocks.values())
    finally:
        demo.close()


def test_auth_file_parsing(tmp_path):
    from engine.errors import SettingsError
    from app.auth import parse_logins

    f = tmp_path / "logins.txt"
    f.write_text("# friends\nann:pa:ss\n\nbob:secret\n")
    assert parse_logins("me:pw", str(f)) == [("me", "pw"), ("ann", "pa:ss"), ("bob", "secret")]
    with pytest.raises(SettingsError, match="USER:PASSWORD"):
        parse_logins("nopassword", None)
    (tmp_path / "bad.txt").write_text("just a name\n")
    with pytest.raises(SettingsError, match="bad.txt line 1"):
        parse_logins(None, str(tmp_path / "bad.txt"))


def test_lora_panel_lists_folder_and_applies_picked_loras(lora_engine, tmp_path):
    from app.web.fields import rows_to_loras
    from app.web.lora_picker import LoraPicker

    app = AppUI(lora_engine, tmp_path / "out")
    choices = LoraPicker(app).on_refresh_cards("z_image_tiny_test")["lora_pick"]["choices"]  # the page's Refresh
    assert choices == ["kohya.safetensors", "sub/fused.safetensors"]
    rows = app.on_add_lora("sub/fused.safetensors", [["", None, ""]])["loras"]
    assert rows == [["sub/fused.safetensors", 1.0, "", False]]
    assert rows_to_loras([["a.safetensors", 0.5, "1.0,0.5"], ["", 1, ""]]) == [
        {"name": "a.safetensors", "strength": 0.5, "schedule": "1.0,0.5"}]

    def run(lora_rows):
        values = values_for(app, "z_image_tiny_test", prompt="a lantern", seed=4, num_inference_steps=2)
        values["loras"] = lora_rows
        out = list(app.generate("z_image_tiny_test", values, request=FakeRequest(), progress=FakeProgress()))
        return np.asarray(Image.open(gallery(out[-1])[0][0])), out[-1]["used"]

    plain, _ = run([])
    with_lora, used = run(rows)
    assert not np.array_equal(plain, with_lora)
    assert used["loras"][0]["name"] == "sub/fused.safetensors"
    path = app.on_save_preset("z_image_tiny_test", "my set", rows, "lantern light")["preset_pick"]
    assert path["value"] == "my set"
    loaded = app.on_load_preset("z_image_tiny_test", "my set", "a boat")
    loaded_rows, prompt = loaded["loras"], loaded["prompt"]
    assert loaded_rows == [["sub/fused.safetensors", 1.0, "", False]] and prompt == "a boat, lantern light"


def test_page_events_are_named_once(server):
    """Each event handler of the page has its own name (tests and tools address events by it)."""
    from collections import Counter

    demo, _, _ = server
    names = Counter(f.name for f in demo.fns.values() if f.name and f.name != "<lambda>")
    assert [n for n, c in names.items() if c > 1] == []
