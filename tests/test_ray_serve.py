"""`serve --ray`: the /v1 API on Ray Serve. A local Ray instance (2 logical CPUs, a small object store, no
dashboard) with 2 CPU replicas of the tiny model; the HTTP proxy on 127.0.0.1; shut down at the end.

Ray is an optional extra (requirements-serve.txt): without it these tests skip, saying so (CI installs it)."""

import os
import signal
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from app.cli import build_parser
from engine.errors import UserError
from tests.serving import cli_images, client, free_port, job_settings, pixels, submit, wait_for, write_logins


def test_without_ray_the_message_says_what_to_install(monkeypatch):
    from app.api.ray_serve import need_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(UserError, match="pip install -r requirements-serve.txt"):
        need_ray()


def ray_args(*flags):
    return build_parser().parse_args(["serve", "--ray", *flags])


ray = pytest.importorskip("ray", reason="Ray Serve is an optional extra: pip install -r requirements-serve.txt")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is an optional extra: pip install -r "
                                                "requirements-serve.txt")

WAIT = 240


def test_worker_deployment_options_come_from_the_flags():
    from app.api.ray_serve import worker_options

    fixed = worker_options(ray_args("--replicas", "3", "--replica-gpus", "1", "--max-queue", "7"))
    assert fixed["num_replicas"] == 3 and fixed["max_ongoing_requests"] == 1 and fixed["max_queued_requests"] == 7
    assert fixed["ray_actor_options"] == {"num_gpus": 1.0, "num_cpus": 1.0}
    assert fixed["backpressure_config"].status_code == 429 and fixed["backpressure_config"].retry_after_s > 0
    scaled = worker_options(ray_args("--min-replicas", "1", "--max-replicas", "4"))
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 1}
    assert "num_replicas" not in scaled
    with pytest.raises(UserError, match="min-replicas 3 and --max-replicas 2"):
        worker_options(ray_args("--min-replicas", "3", "--max-replicas", "2"))


@pytest.fixture(scope="module")
def cluster(tiny_model_json, tmp_path_factory):
    from app.api.ray_serve import runtime_env, serve_ray

    folder = tmp_path_factory.mktemp("ray")
    users, _ = write_logins(folder)
    args = ray_args("--model-def", str(tiny_model_json[0]), "--server-port", str(free_port()), "--output",
                    str(folder / "out"), "--auth-file", str(users), "--replicas", "2", "--replica-gpus", "0",
                    "--replica-cpus", "1", "--max-queue", "2")
    ray.init(num_cpus=2, num_gpus=0, object_store_memory=80 * 2**20, include_dashboard=False,
             log_to_driver=False, runtime_env=runtime_env())
    try:
        url = serve_ray(args, block=False, init=False)
        yield SimpleNamespace(url=url, folder=folder, json=tiny_model_json[0])
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_serve_concurrent_jobs_with_the_clis_images(cluster):
    reference = cli_images(cluster.json, cluster.folder / "cli", 40, 4)
    views, errors = {}, []

    def user(name, seeds):
        try:
            http = client(cluster.url, name)
            jobs = {seed: submit(http, job_settings(seed)) for seed in seeds}
            for seed, job in jobs.items():
                view = wait_for(http, job["url"], timeout=WAIT)
                views[seed] = (view, http.get(view["images"][0]["url"]).content)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=user, args=(name, seeds)) for name, seeds in (("ann", (40, 41)),
                                                                                     ("bob", (42, 43)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not errors and sorted(views) == [40, 41, 42, 43]
    for seed, (view, png) in views.items():
        assert view["state"] == "done" and view["attempts"] == 1
        assert np.array_equal(pixels(png), reference[seed]), seed
    assert len({view["worker"] for view, _ in views.values()}) == 2  # both replicas worked
    assert len(list((cluster.folder / "out").glob("*.png"))) == 4  # written by the ingress, atomically
    bob = client(cluster.url, "bob")
    assert bob.get(views[40][0]["url"]).status_code == 404  # ann's job is not bob's


def test_a_full_queue_answers_429_with_retry_after(cluster):
    ann = client(cluster.url, "ann")
    long = [ann.post("/v1/jobs", json=job_settings(s, steps=50, size=768)).json() for s in (1, 2)]
    for job in long:
        wait_for(ann, job["url"], states=("running",), timeout=WAIT)  # both replicas busy
    queued = [ann.post("/v1/jobs", json=job_settings(s)) for s in (3, 4)]  # --max-queue 2: two may wait
    assert [q.status_code for q in queued] == [202, 202]
    assert [q.json()["state"] for q in queued] == ["queued", "queued"]
    assert [ann.get(q.json()["url"]).json()["position"] for q in queued] == [0, 1]
    refused = ann.post("/v1/jobs", json=job_settings(5))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "queue is full" in refused.json()["detail"]
    for job in [*long, *(q.json() for q in queued)]:
        assert ann.delete(job["url"]).json()["state"] == "cancelled"
    for job in long:
        assert wait_for(ann, job["url"], timeout=WAIT)["state"] == "cancelled"
    again = ann.post("/v1/jobs", json=job_settings(6))  # the replicas are free again
    assert again.status_code == 202 and wait_for(ann, again.json()["url"], timeout=WAIT)["state"] == "done"


def test_a_replica_killed_mid_job_is_retried_on_another(cluster):
    cat = client(cluster.url, "cat")
    job = cat.post("/v1/jobs", json=job_settings(50, steps=50)).json()
    view = wait_for(cat, job["url"], states=("running",), timeout=WAIT, steps=1)
    os.kill(int(view["worker"].rsplit(" ", 1)[1]), signal.SIGKILL)
    view = wait_for(cat, job["url"], timeout=WAIT)
    assert view["state"] == "done" and view["attempts"] == 2, view
    reference = cli_images(cluster.json, cluster.folder / "cli50", 50, 1, steps=50)
    assert np.array_equal(pixels(cat.get(view["images"][0]["url"]).content), reference[50])


def test_serve_config_yaml_is_a_valid_ray_config_for_this_app():
    """The shipped serve_config.yaml: Ray's own schema accepts it; its builder builds both deployments from
    the same flags as `python app.py serve` (no cluster needed to build)."""
    import importlib
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((Path(__file__).parent.parent / "serve_config.yaml")
                                                             .read_text()))
    (application,) = config.applications
    module, _, name = application.import_path.partition(":")
    builder = getattr(importlib.import_module(module), name)
    assert {d.name for d in application.deployments} == {"ImageWorker", "Ingress"}
    flags = application.args["flags"]
    assert "--replica-gpus" in flags and ray_args(*flags).max_queue == 32
    ingress = builder({"flags": ["--max-queue", "3", "--replica-gpus", "0"]})._bound_deployment
    worker = ingress.init_args[0]._bound_deployment
    assert (ingress.name, worker.name) == ("Ingress", "ImageWorker")
    assert worker.max_ongoing_requests == 1 and worker.max_queued_requests == 3
    assert worker.ray_actor_options["num_gpus"] == 0
