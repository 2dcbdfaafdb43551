"""Several GPUs in one machine (`serve --gpus`): one worker process per device fed from one queue. CPU worker
processes stand in for GPUs; the tiny model; the server on 127.0.0.1."""

import os
import signal
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from app.api.server import serve  # noqa: E402
from app.cli import build_parser  # noqa: E402
from engine.workers import devices_from, threads_for  # noqa: E402
from tests.serving import (USERS, cli_images, client, free_port, job_settings, pixels, wait_for,  # noqa: E402
                           write_logins)

WAIT = 240


@pytest.fixture(scope="module")
def farm(tiny_model_json, tmp_path_factory):
    folder = tmp_path_factory.mktemp("farm")
    users, _ = write_logins(folder)
    args = build_parser().parse_args([
        "serve", "--model-def", str(tiny_model_json[0]), "--server-port", str(free_port()), "--output",
        str(folder / "out"), "--auth-file", str(users), "--gpus", "cpu,cpu"])
    running = serve(args, block=False)
    yield SimpleNamespace(url=running.url, folder=folder, json=tiny_model_json[0], queue=running.backend.queue,
                          pool=running.backend.pool)
    running.stop()
    assert not any(w.process.is_alive() for w in running.backend.pool.workers)  # no worker left behind


def test_gpu_lists():
    assert devices_from("0,1") == ["cuda:0", "cuda:1"] and devices_from("cpu, cpu") == ["cpu", "cpu"]
    assert devices_from("cuda:2,3") == ["cuda:2", "cuda:3"]
    assert threads_for(["cpu", "cpu"], cores=2) == 1 and threads_for(["cuda:0"], cores=8) == 8


def running_job(farm, job_id, steps=1):
    """The queue's job once its worker has reported `steps` steps (in-process: no HTTP polling delay)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        job = farm.queue.get(job_id)
        event = job.last_event
        if job.state == "running" and event is not None and getattr(event, "step", -1) + 1 >= steps:
            return job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} did not get going")


def test_killing_a_worker_mid_job_retries_it_elsewhere_and_returns_the_right_image(farm):
    ann = client(farm.url, "ann")
    job = ann.post("/v1/jobs", json=job_settings(31, steps=50)).json()
    victim = running_job(farm, job["id"])
    slot, pid = victim.slot, farm.pool.pid(victim.slot)
    os.kill(pid, signal.SIGKILL)
    view = wait_for(ann, job["url"], timeout=WAIT)
    assert view["state"] == "done" and view["attempts"] == 2, view
    assert farm.queue.get(job["id"]).slot != slot  # the other worker, which was free, ran it again
    reference = cli_images(farm.json, farm.folder / "cli50", 31, 1, steps=50)
    assert np.array_equal(pixels(ann.get(view["images"][0]["url"]).content), reference[31])
    assert farm.pool.pid(slot) != pid and farm.pool.restarts == 1  # a new worker took the dead one's place
    assert len(list((farm.folder / "out").glob("*.png"))) == 1  # the lost run wrote nothing


def test_a_job_whose_worker_dies_twice_fails_with_the_reason(farm):
    bob = client(farm.url, "bob")
    job = bob.post("/v1/jobs", json=job_settings(32, steps=50, size=512)).json()
    for attempt in (1, 2):
        victim = running_job(farm, job["id"])  # a step of this attempt reported (a retry starts afresh)
        assert victim.attempts == attempt
        os.kill(farm.pool.pid(victim.slot), signal.SIGKILL)
        while victim.attempts == attempt and victim.state == "running":
            time.sleep(0.01)
    view = wait_for(bob, job["url"], timeout=WAIT)
    assert view["state"] == "failed" and view["images"] == []
    assert "the worker on cpu stopped (exit code -9) while running this job (tried 2 times)" in view["error"]


def test_six_jobs_from_three_clients_all_done_each_the_clis_image(farm):
    reference = cli_images(farm.json, farm.folder / "cli", 100, 6)
    views, errors = {}, []

    def user(name, seeds):
        try:
            http = client(farm.url, name)
            jobs = {seed: http.post("/v1/jobs", json=job_settings(seed)).json() for seed in seeds}
            for seed, job in jobs.items():
                view = wait_for(http, job["url"], timeout=WAIT)
                views[seed] = (view, http.get(view["images"][0]["url"]).content, job["id"])
        except Exception as exc:  # reported below, from the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=user, args=(name, (100 + 2 * i, 101 + 2 * i)))
               for i, name in enumerate(USERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not errors and sorted(views) == list(range(100, 106))
    for seed, (view, png, _) in views.items():
        assert view["state"] == "done" and view["images"][0]["settings"]["seed"] == seed
        assert np.array_equal(pixels(png), reference[seed]), seed  # whichever worker ran it
    assert {farm.queue.get(job_id).slot for _, _, job_id in views.values()} == {0, 1}  # both workers worked
