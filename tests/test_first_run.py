"""The first run: downloads as jobs (progress per file and in all, Stop cancels) against a stand-in hub on
127.0.0.1, every missing file named at once offline, the download plans per file kind, the enhancer loading only
the text encoder, and the first type the page selects."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from engine.engine import Engine
from engine.errors import DownloadError, Interrupted
from engine.jobs import ProgressEvent, StageEvent
from engine.registry import Registry
from engine.weights.files import FileLocator
from models import families
from tests.hub_standin import StandInHub

REPO = "test/tiny"
BIG = 40 * 2**20  # more than huggingface_hub's 10 MB read size, so a download reports on the way


def hub_files(folder: Path, slow_transformer: bool = False) -> dict:
    """The tiny model's files as the stand-in hub serves them (the transformer padded to BIG bytes when slow:
    it is never loaded, only downloaded and cancelled)."""
    files = {f"{REPO}/{name}": (folder / name).read_bytes()
             for name in ("transformer.safetensors", "text_encoder.safetensors", "vae.safetensors")}
    if slow_transformer:
        files[f"{REPO}/transformer.safetensors"] = b"\0" * BIG
    return files


def hub_model_json(path: Path, folder: Path, int8: bool = False) -> Path:
    """A model type whose weights are on the hub (tokenizer local), with sizes as model JSONs give them."""
    hub = f"https://huggingface.co/{REPO}/resolve/main/"
    transformer = [hub + "transformer.safetensors"] + ([hub + "transformer_quanto_int8.safetensors"] if int8 else [])
    encoder = [hub + "text_encoder.safetensors"] + ([hub + "text_encoder_quanto_int8.safetensors"] if int8 else [])
    sizes = {"transformer.safetensors": 12_310_000_000, "text_encoder.safetensors": 8_050_000_000,
             "vae.safetensors": 168_000_000, "transformer_quanto_int8.safetensors": 6_900_000_000,
             "text_encoder_quanto_int8.safetensors": 4_400_000_000}
    path.write_text(json.dumps({"model": {
        "name": "Hub tiny", "architecture": "z_image", "URLs": transformer, "text_encoder_URLs": encoder,
        "vae_URLs": hub + "vae.safetensors", "tokenizer": str(folder / "tokenizer"), "file_sizes": sizes},
        "resolution": "256x256"}))
    return path


@pytest.fixture
def online(monkeypatch):
    """huggingface_hub allowed to reach the network (the tests set offline mode for everything else)."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return monkeypatch


def hub_engine(tmp_path, tiny_model_json, int8=False) -> Engine:
    model_json = hub_model_json(tmp_path / "hubtiny.json", tiny_model_json[1], int8)
    return Engine(Registry(families(), extra_files=[model_json]), FileLocator(tmp_path / "ckpts"))


def test_a_download_reports_each_file_then_cancels_leaving_no_file(tmp_path, tiny_model_json, online):
    folder = tiny_model_json[1]
    with StandInHub(hub_files(folder, slow_transformer=True), slow={f"{REPO}/transformer.safetensors"}) as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        engine = hub_engine(tmp_path, tiny_model_json)
        job = engine.jobs.submit(lambda ctx: engine.download("hubtiny"), "me", "download")
        seen = []
        for event in job.events():
            seen.append(event)
            if isinstance(event, ProgressEvent) and event.done > 0:
                engine.jobs.stop("me")  # Cancel, once bytes arrived
        with pytest.raises(Interrupted):
            job.outcome()
        progress = [e for e in seen if isinstance(e, ProgressEvent)]
        assert progress[0].what == "downloading file 1 of 3: transformer.safetensors"
        assert progress[0].total == 12_310_000_000  # the model JSON's size until the hub says more
        assert any(e.total == BIG and 0 < e.done < BIG for e in progress)  # the hub's real size, part-way
        assert progress[-1].overall[1] == BIG + 8_050_000_000 + 168_000_000  # the total, files still to come
        assert job.state == "cancelled" and hub.sent[f"{REPO}/transformer.safetensors"] < BIG
        target = tmp_path / "ckpts" / "transformer.safetensors"
        assert not target.exists()  # nothing half-written under the final name
        assert not list((tmp_path / "ckpts").glob("*.safetensors"))


def test_a_download_fetches_every_missing_file_then_the_type_is_ready(tmp_path, tiny_model_json, online):
    from app.web import first_run

    folder = tiny_model_json[1]
    with StandInHub(hub_files(folder)) as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        engine = hub_engine(tmp_path, tiny_model_json)
        assert first_run.missing(engine, "hubtiny")
        events = list(engine.jobs.run(lambda ctx: engine.download("hubtiny"), "me", "download"))
        whats = [e.what for e in events if isinstance(e, ProgressEvent)]
        assert [w for w in dict.fromkeys(whats)] == [f"downloading file {k} of 3: {n}.safetensors"
                                                    for k, n in ((1, "transformer"), (2, "text_encoder"), (3, "vae"))]
        paths = events[-1]
        assert (paths["transformer"].read_bytes() == (folder / "transformer.safetensors").read_bytes())
        assert not first_run.missing(engine, "hubtiny")
        images = engine.generate(engine.settings_for("hubtiny", prompt="x", num_inference_steps=1))
        assert images[0].image.size == (256, 256)


def test_offline_every_missing_file_is_named_at_once_with_its_place(tmp_path, tiny_model_json):
    engine = hub_engine(tmp_path, tiny_model_json)
    engine.locator.offline = True
    with pytest.raises(DownloadError) as err:
        engine.load("hubtiny")
    text = str(err.value)
    assert text.startswith("3 file(s) missing (20.5 GB in all)")
    for name in ("transformer.safetensors", "text_encoder.safetensors", "vae.safetensors"):
        assert name in text and str((tmp_path / "ckpts" / name).resolve()) in text  # where each one goes


def test_plans_per_file_kind_and_the_kind_that_fits_the_gpu(tmp_path, tiny_model_json):
    from app.web import first_run

    engine = hub_engine(tmp_path, tiny_model_json, int8=True)
    plans = {p.kind: p for p in first_run.plans(engine, "hubtiny")}
    assert set(plans) == {"bf16", "int8"}
    assert plans["bf16"].total == 12_310_000_000 + 8_050_000_000 + 168_000_000
    assert plans["int8"].total == 6_900_000_000 + 4_400_000_000 + 168_000_000
    assert all(Path(target).is_absolute() for *_, target in plans["int8"].files)
    ordered = [plans["bf16"], plans["int8"]]
    assert first_run.recommend(ordered, 24 * 10**9) == "bf16"  # 12.3 GB fits a 24 GB card
    assert first_run.recommend(ordered, 12 * 10**9) == "int8"  # not a 12 GB one: INT8
    assert first_run.recommend(ordered, None) == "int8"  # no GPU: the smaller download
    text = first_run.banner(engine, "hubtiny", ordered)
    assert "20.5 GB" in text and "11.5 GB" in text and str((tmp_path / "ckpts").resolve()) in text
    assert "free disk space" in text


def test_the_enhancer_loads_only_the_text_encoder(tmp_path, tiny_model_json):
    """With no transformer on disk (and offline), Enhance works: it never asks for the transformer."""
    folder = tiny_model_json[1]
    (tmp_path / "ckpts").mkdir()
    for name in ("text_encoder.safetensors",):
        shutil.copy(folder / name, tmp_path / "ckpts" / name)
    engine = hub_engine(tmp_path, tiny_model_json)
    engine.locator.offline = True
    stages = []
    job = engine.jobs.submit(lambda ctx: engine.enhance(engine.settings_for("hubtiny", prompt="a cat", seed=3)),
                             "me", "enhance")
    for event in job.events():
        if isinstance(event, StageEvent):
            stages.append(event.name)
    enhanced = job.outcome()
    assert enhanced.original_prompt == "a cat" and enhanced.prompt
    assert stages == ["loading the text encoder"]
    with pytest.raises(DownloadError, match="transformer.safetensors"):  # generating does need the rest
        engine.load("hubtiny")


def test_the_page_starts_on_a_type_whose_files_are_here(engine, tmp_path):
    from app.web.handlers import AppUI

    app = AppUI(engine, tmp_path / "out")
    assert app.first == "z_image_tiny_test"  # the shipped types' files are not here; the test model's are
    names = dict((v, k) for k, v in app.type_choices())
    assert names["z_image_control2_1"] != "z_image_control2_1"  # a name, not the id
    assert app.first_run("z_image")["first_run"]["visible"] is True
    assert app.first_run("z_image_tiny_test")["first_run"]["visible"] is False


def test_the_page_download_streams_progress_and_cancel_stops_it(tmp_path, tiny_model_json, online):
    """The first-run banner's handler: per-file and total progress in its status, Cancel (another event of the
    same session) stops the job, the banner stays for the files still missing."""
    from app.web.handlers import AppUI
    from tests.test_ui import FakeRequest

    folder = tiny_model_json[1]
    with StandInHub(hub_files(folder, slow_transformer=True), slow={f"{REPO}/transformer.safetensors"}) as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        app = AppUI(hub_engine(tmp_path, tiny_model_json), tmp_path / "out")
        frames, cancelled = [], False
        for frame in app.on_download("hubtiny", "bf16", FakeRequest()):
            frames.append(frame)
            if "of 41.9 MB" in str(frame.get("download_status")) and not cancelled:  # the hub's size: bytes came
                cancelled = True
                threading.Thread(target=app.on_cancel_download, args=(FakeRequest(),)).start()
        texts = [str(f.get("download_status", "")) for f in frames]
        assert any("Downloading file 1 of 3: transformer.safetensors" in t for t in texts)
        assert any("all files:" in t for t in texts)  # the total beside the file's own progress
        assert "Download cancelled" in texts[-1] and frames[-1]["download"]["interactive"] is True
        assert app.first_run("hubtiny")["first_run"]["visible"] is True
