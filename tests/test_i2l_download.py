"""Image to LoRA, downloading its files: through the one hub download path (FileLocator.download), into
DiffSynth-Studio's layout, with the bytes reported to the job and Stop ending the download (the DINOv3 file is
13 GB), against the stand-in hub on 127.0.0.1."""

from __future__ import annotations

import pytest

from engine.errors import Interrupted
from engine.jobs import JobQueue, ProgressEvent
from engine.weights.files import FileLocator
from models.z_image.i2l import files as F
from models.z_image.i2l import run as R
from models.z_image.i2l import tiny
from models.z_image.i2l.identify import DINOV3, SIGLIP2
from tests.hub_standin import StandInHub
from tests.i2l_files import write_picture
from tests.test_first_run import BIG, online  # noqa: F401 (fixture)


def test_the_encoders_download_with_progress_and_stop(tmp_path, online):  # noqa: F811
    made = tiny.write_files(tmp_path / "made", "diffsynth")
    siglip, dinov3 = F.PARTS[SIGLIP2], F.PARTS[DINOV3]
    key = {role: f"{part.repo}/{part.path}" for role, part in ((SIGLIP2, siglip), (DINOV3, dinov3))}
    served = {key[SIGLIP2]: made[SIGLIP2].read_bytes(), key[DINOV3]: b"\0" * BIG}  # DINOv3 only cancelled
    ckpts = tmp_path / "ckpts"
    with StandInHub(served, slow={key[DINOV3]}) as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        locator = FileLocator(ckpts)
        request = R.prepare([write_picture(tmp_path / "p.png")], "mine", tmp_path / "loras", locator)
        queue = JobQueue()
        job = queue.submit(lambda ctx: R.make_lora(request, locator, "cpu", ctx.progress), "me", "image-to-lora")
        seen = []
        for event in job.events():
            seen.append(event)
            if isinstance(event, ProgressEvent) and event.what.startswith("downloading the DINOv3") and event.done:
                queue.stop("me")  # Stop, once DINOv3's bytes arrive
        with pytest.raises(Interrupted):
            job.outcome()
        queue.close()
    progress = [e for e in seen if isinstance(e, ProgressEvent)]
    size = len(served[key[SIGLIP2]])
    assert any(e.what.startswith("downloading the SigLIP2") and e.done == e.total == size for e in progress)
    assert any(e.what.startswith("downloading the DINOv3") and e.total == BIG and 0 < e.done < BIG for e in progress)
    assert job.state == "cancelled" and hub.sent[key[DINOV3]] < BIG
    folder = ckpts / "DiffSynth-Studio" / "General-Image-Encoders"
    assert (folder / siglip.path).read_bytes() == served[key[SIGLIP2]]  # DiffSynth-Studio's layout
    assert not (folder / dinov3.path).exists()  # nothing half-written under the final name
    assert not any(method == "GET" and "Z-Image-i2L" in path for method, path in hub.requests)
