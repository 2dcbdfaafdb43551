"""The HTTP API (/v1), served alone (`serve`) and next to the page, with the tiny model on 127.0.0.1."""

import base64
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from app.api.auth import ApiAuth, ApiKeys  # noqa: E402
from app.auth import Logins  # noqa: E402
from app.api.server import host_for, serve  # noqa: E402
from app.cli import build_parser  # noqa: E402
from engine.errors import SettingsError  # noqa: E402
from engine.outputs import read_png_settings  # noqa: E402
from tests.serving import (KEY, TINY, USERS, cli_images, client, free_port, job_settings, pixels,  # noqa: E402
                           wait_for, write_logins)


@pytest.fixture(scope="module")
def api(tiny_model_json, tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    users, keys = write_logins(folder)
    args = build_parser().parse_args([
        "serve", "--model-def", str(tiny_model_json[0]), "--server-port", str(free_port()), "--output",
        str(folder / "out"), "--auth-file", str(users), "--api-key-file", str(keys), "--max-jobs-per-user", "2"])
    running = serve(args, block=False)
    yield SimpleNamespace(url=running.url, out=folder / "out", folder=folder, json=tiny_model_json[0],
                          queue=running.backend.queue)
    running.stop()


def long_job(seed=1):
    return job_settings(seed, steps=50, size=768)  # the most steps Turbo types allow; cancelled long before the end


def test_submit_poll_fetch_gives_the_clis_image(api):
    ann = client(api.url, "ann")
    answer = ann.post("/v1/jobs", json=job_settings(11))
    assert answer.status_code == 202
    job = answer.json()
    assert job["state"] in ("queued", "running", "done") and job["url"].endswith(f"/v1/jobs/{job['id']}")
    view = wait_for(ann, job["url"])
    assert view["state"] == "done" and view["error"] is None
    assert view["progress"] == {"step": 2, "steps": 2, "fraction": 1.0}
    (image,) = view["images"]
    assert image["settings"]["seed"] == 11 and image["settings"]["model_type"] == TINY
    png = ann.get(image["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    saved = list(api.out.glob("*.png"))
    assert any(p.read_bytes() == png.content for p in saved)  # served from the outputs folder, as written
    assert not list(api.out.glob(".partial-*"))
    reference = cli_images(api.json, api.folder / "cli", 11, 1)
    assert np.array_equal(pixels(png.content), reference[11])
    settings, _ = read_png_settings(next(p for p in saved if p.read_bytes() == png.content))
    assert settings.seed == 11 and settings.prompt == "a lighthouse at dusk"


def test_api_key_and_login_name_the_owner_and_wrong_ones_are_refused(api):
    robot = client(api.url, key=KEY)
    job = robot.post("/v1/jobs", json=job_settings(3)).json()
    assert wait_for(robot, job["url"])["state"] == "done"
    wrong_logins = [httpx.Client(base_url=api.url, auth=("ann", "wrong"), timeout=30),
                    httpx.Client(base_url=api.url, auth=("nobody", "ann-password-1"), timeout=30)]
    routes = (("get", "/v1/models"), ("get", f"/v1/jobs/{job['id']}"), ("post", "/v1/jobs"))
    # wrong logins on one route each: a few more failures from one address would lock it out (app.auth)
    for bad, paths in [(client(api.url, key=KEY[:-1] + "X"), routes), (client(api.url), routes),
                       *[(login, routes[:1]) for login in wrong_logins]]:
        for method, path in paths:
            answer = getattr(bad, method)(path, **({"json": job_settings(1)} if method == "post" else {}))
            assert answer.status_code == 401, (method, path)
            assert "Basic" in answer.headers["www-authenticate"]
    header = "Basic " + base64.b64encode(b"ann:" + USERS["ann"].encode()).decode()
    assert httpx.get(f"{api.url}/v1/models", headers={"Authorization": header}).status_code == 200
    assert httpx.get(f"{api.url}/v1/models", headers={"X-API-Key": KEY}).status_code == 200


def test_another_users_job_is_not_readable_nor_cancellable(api):
    ann, bob = client(api.url, "ann"), client(api.url, "bob")
    job = ann.post("/v1/jobs", json=job_settings(5)).json()
    view = wait_for(ann, job["url"])
    image_url = view["images"][0]["url"]
    for answer in (bob.get(job["url"]), bob.get(image_url), bob.delete(job["url"]),
                   client(api.url, key=KEY).get(image_url)):
        assert answer.status_code == 404
        assert "no job" in answer.json()["detail"]
    assert ann.get(image_url).status_code == 200
    assert ann.get(job["url"].rsplit("/", 1)[0] + "/999999").status_code == 404
    assert ann.get(image_url.rsplit("/", 1)[0] + "/7").status_code == 404  # no such image


def test_bad_settings_answer_422_naming_the_field(api):
    ann = client(api.url, "ann")
    cases = [({"width": 1000}, "width", "multiple of 16"),
             ({"num_inference_steps": 0}, "num_inference_steps", "out of range"),
             ({"nag_start": 0.5, "nag_end": 0.25}, "nag_end", "must be below NAG end"),
             ({"sampler": "nope"}, "sampler", "not available"),
             ({"loras": [{"name": "missing.safetensors"}]}, "loras", "missing.safetensors"),
             ({"control_image": "/etc/passwd"}, "control_image", "cannot be given through the HTTP API"),
             ({"mask": "ui_settings.json"}, "mask", "cannot be given through the HTTP API"),
             ({"model_type": "nope"}, "model_type", "unknown model type"),
             ({"prompt": "  "}, "prompt", "empty"),
             ({"colour": "red"}, "colour", "Extra inputs"),
             ({"seed": "twelve"}, "seed", "valid integer")]
    for changes, field, words in cases:
        answer = ann.post("/v1/jobs", json={**job_settings(1), **changes})
        assert answer.status_code == 422, changes
        (problem,) = answer.json()["detail"]
        assert problem["loc"] == ["body", field] and words in problem["msg"], (changes, problem)
    answer = ann.post("/v1/jobs", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert ann.post("/v1/jobs", json=job_settings(2)).status_code == 202  # and it keeps serving


def test_a_png_settings_json_is_accepted_as_it_is(api):
    """The body is what a PNG holds: the `settings` of `python app.py settings FILE.png`."""
    ann = client(api.url, "ann")
    first = wait_for(ann, ann.post("/v1/jobs", json=job_settings(21)).json()["url"])
    again = wait_for(ann, ann.post("/v1/jobs", json=first["images"][0]["settings"]).json()["url"])
    assert np.array_equal(pixels(ann.get(first["images"][0]["url"]).content),
                          pixels(ann.get(again["images"][0]["url"]).content))


def test_cancel_a_running_and_a_queued_job_and_queue_positions(api):
    ann, bob = client(api.url, "ann"), client(api.url, "bob")
    running = ann.post("/v1/jobs", json=long_job()).json()
    wait_for(ann, running["url"], states=("running",), steps=1)
    queued = bob.post("/v1/jobs", json=job_settings(7)).json()
    assert bob.get(queued["url"]).json()["position"] == 1  # one job ahead of it
    stopped = bob.delete(queued["url"]).json()
    assert stopped["state"] == "cancelled"
    started = time.monotonic()
    assert ann.delete(running["url"]).status_code == 200
    view = wait_for(ann, running["url"])
    assert view["state"] == "cancelled" and view["images"] == []
    assert time.monotonic() - started < 60  # at its next step, not after 200
    assert 0 < view["progress"]["step"] < 200
    assert wait_for(bob, bob.post("/v1/jobs", json=job_settings(8)).json()["url"])["state"] == "done"


def test_a_full_queue_answers_429_with_retry_after(api):
    cat = client(api.url, "cat")
    first = cat.post("/v1/jobs", json=long_job(2)).json()
    wait_for(cat, first["url"], states=("running",))
    waiting = [cat.post("/v1/jobs", json=job_settings(s)).json() for s in (1, 2)]  # --max-jobs-per-user 2
    refused = cat.post("/v1/jobs", json=job_settings(3))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "at most 2" in refused.json()["detail"]
    assert client(api.url, "ann").post("/v1/jobs", json=job_settings(4)).status_code == 202  # others still can
    for job in [first, *waiting]:
        cat.delete(job["url"])
    assert wait_for(cat, first["url"])["state"] == "cancelled"


def test_models_and_the_openapi_schema(api):
    ann = client(api.url, "ann")
    models = {m["type"]: m for m in ann.get("/v1/models").json()}
    tiny = models[TINY]
    assert tiny["available"] and {f["component"] for f in tiny["files"]} >= {"transformer", "text_encoder", "vae"}
    assert all(f["present"] and "/" not in f["file"] for f in tiny["files"])  # file names, not server paths
    assert not all(f["present"] for f in models["z_image"]["files"])  # real weights are not here
    schema = httpx.get(f"{api.url}/v1/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/images/{n}", "/models"} <= set(schema["paths"])
    assert {"post"} <= set(schema["paths"]["/jobs"]) and "delete" in schema["paths"]["/jobs/{job_id}"]
    fields = schema["components"]["schemas"]["Settings"]["properties"]
    assert {"prompt", "seed", "num_inference_steps", "loras", "nag_scale"} <= set(fields)
    assert "429" in schema["paths"]["/jobs"]["post"]["responses"]
    assert httpx.get(f"{api.url}/v1/docs").status_code == 200


def test_shutdown_refuses_new_jobs_with_503_and_cancels_waiting_ones(tiny_model_json, tmp_path):
    args = build_parser().parse_args(["serve", "--model-def", str(tiny_model_json[0]), "--server-port",
                                      str(free_port()), "--output", str(tmp_path)])
    running = serve(args, block=False)
    local = httpx.Client(base_url=running.url, timeout=30)
    first = local.post("/v1/jobs", json=long_job()).json()
    wait_for(local, first["url"], states=("running",))
    second = local.post("/v1/jobs", json=job_settings(1)).json()
    running.backend.queue.close("the server is shutting down")
    refused = local.post("/v1/jobs", json=job_settings(2))
    assert refused.status_code == 503 and "shutting down" in refused.json()["detail"]
    view = local.get(second["url"]).json()
    assert view["state"] == "cancelled" and "never started" in view["error"]
    local.delete(first["url"])
    wait_for(local, first["url"])
    running.stop()


# ---- who may call -----------------------------------------------------------------------------------

def test_without_a_login_only_this_computer_is_served_and_it_says_so():
    said = []
    args = SimpleNamespace(server_name=None, listen=True)
    assert host_for(args, ApiAuth(), said.append) == "127.0.0.1"
    assert "not listening on 0.0.0.0" in said[0] and "this computer only" in said[1]
    assert host_for(args, ApiAuth(Logins([("a", "b")]).check), said.append) == "0.0.0.0"

    def caller(host, headers=None):
        return SimpleNamespace(client=SimpleNamespace(host=host), headers=headers or {})

    from fastapi import HTTPException

    assert ApiAuth().owner(caller("127.0.0.1")) == "local" and ApiAuth().owner(caller("::1")) == "local"
    with pytest.raises(HTTPException) as refused:
        ApiAuth().owner(caller("192.0.2.7"))
    assert refused.value.status_code == 403 and "this computer only" in refused.value.detail


def test_logins_and_keys_compare_digests(tmp_path):
    import pickle

    logins = Logins([("ann", "pw1"), ("bob", "pw2")])
    check = pickle.loads(pickle.dumps(logins)).check  # a Ray ingress carries it
    assert check("ann", "pw1") and not check("ann", "pw2") and not check("zed", "pw1") and not check("", "")
    assert b"pw1" not in pickle.dumps(logins)  # digests only
    path = tmp_path / "keys.txt"
    path.write_text("\ufeff# keys\nrobot: " + KEY + "\n\nother:" + "k" * 20 + "\n")
    keys = ApiKeys.from_file(path)
    assert keys.owner(KEY) == "robot" and keys.owner("k" * 20) == "other" and keys.owner("k" * 19) is None
    for text, words in (("robot\n", "expected NAME:KEY"), ("robot:short\n", "shorter than 20"),
                        (f"a:{KEY}\na:{KEY}x\n", "name 'a' is given again .first in .* line 1"),
                        (f"a:{KEY}\nb:{KEY}\n", "another name's"), ("# nothing\n", "no NAME:KEY lines")):
        path.write_text(text)
        with pytest.raises(SettingsError, match=words):
            ApiKeys.from_file(path)
    path.write_bytes(f"a:{KEY}\n".encode() + b"b:\xff" + KEY.encode() + b"\n")  # a Latin-1 byte on line 2
    with pytest.raises(SettingsError, match="line 2: not UTF-8 text"):
        ApiKeys.from_file(path)


# ---- next to the page ---------------------------------------------------------------------------------

def test_api_mounted_next_to_the_page_shares_its_logins_and_queue(tiny_model_json, tmp_path, monkeypatch):
    from gradio_client import Client

    from app.web import launch

    users, keys = write_logins(tmp_path)
    monkeypatch.setattr(launch, "OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.chdir(tmp_path)  # the page remembers settings in its working folder
    port = free_port()
    args = build_parser().parse_args(["--model-def", str(tiny_model_json[0]), "--server-port", str(port),
                                      "--auth-file", str(users), "--api-key-file", str(keys)])
    demo = launch.launch(args, block=False)
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/v1/models").status_code == 401  # the API wants a login too
        ann = client(url, "ann")
        page_result = {}
        thread = threading.Thread(target=lambda: page_result.update(paths=Client(
            url + "/", auth=("bob", USERS["bob"]), verbose=False).predict(
            prompt="page", model_type=TINY, settings='{"seed": 4, "num_inference_steps": 2, "width": 256, '
                                                     '"height": 256}', api_name="/txt2img")))
        thread.start()
        job = ann.post("/v1/jobs", json=job_settings(4, prompt="page")).json()
        view = wait_for(ann, job["url"])
        thread.join(240)
        assert view["state"] == "done" and page_result["paths"]  # both ran, on the one queue
        assert np.array_equal(pixels(ann.get(view["images"][0]["url"]).content),
                              pixels(open(page_result["paths"][0], "rb").read()))
        assert client(url, key=KEY).get(view["images"][0]["url"]).status_code == 404  # ann's, not robot's
        assert httpx.get(f"{url}/").status_code == 200  # the page is still there
    finally:
        demo.close()


def test_images_are_served_only_from_the_outputs_folder(engine, tmp_path):
    """Whatever a backend recorded, a file outside the outputs folder is never sent."""
    from fastapi.testclient import TestClient

    from app.api.backend import Image, JobView
    from app.api.routes import build_api, root_app

    outside = tmp_path / "secret.png"
    outside.write_bytes(b"not for you")
    inside = tmp_path / "out" / "mine.png"
    inside.parent.mkdir()
    inside.write_bytes(b"\x89PNG mine")

    class Recorded:
        async def view(self, job_id, owner):
            return JobView(job_id, "done", images=[Image(inside, {}), Image(outside, {}),
                                                   Image(tmp_path / "out" / ".." / "secret.png", {})])

    keys = ApiKeys({"robot": KEY})
    http = TestClient(root_app(build_api(Recorded(), engine, ApiAuth(keys=keys), tmp_path / "out")))
    headers = {"X-API-Key": KEY}
    assert http.get("/v1/jobs/1/images/0", headers=headers).content == b"\x89PNG mine"
    for n in (1, 2):
        answer = http.get(f"/v1/jobs/1/images/{n}", headers=headers)
        assert answer.status_code == 404 and b"not for you" not in answer.content


def test_a_page_shared_without_a_login_serves_no_api(tiny_model_json, tmp_path, monkeypatch, capsys):
    """A share link reaches the page from anywhere, through a local tunnel: no login, no API."""
    import gradio.networking

    from app.web import launch

    monkeypatch.setattr(gradio.networking, "setup_tunnel", lambda **kw: "https://fake-share.gradio.live")
    monkeypatch.chdir(tmp_path)
    port = free_port()
    demo = launch.launch(build_parser().parse_args(["--model-def", str(tiny_model_json[0]), "--share",
                                                    "--server-port", str(port)]), block=False)
    try:
        assert "the HTTP API (/v1) is off" in capsys.readouterr().err
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
    finally:
        demo.close()


def test_out_of_gpu_memory_fails_the_job_clearly_and_frees_the_model(engine, monkeypatch):
    """Every serving worker runs engine.render: out of memory is the job's error, and the model is let go."""
    import torch

    from engine.engine import Engine
    from engine.errors import UserError
    from engine.jobs import JobQueue
    from engine.render import render

    worker = Engine(engine.registry, engine.locator)
    request = worker.prepare(worker.settings_for(TINY, prompt="x", width=512, height=768, num_inference_steps=1))
    unloaded = []
    monkeypatch.setattr(worker, "apply_loras", lambda request: [])
    monkeypatch.setattr(worker, "unload", lambda: unloaded.append(True))

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(worker, "generate", out_of_memory)
    job = JobQueue().submit(lambda ctx: render(worker, request, ctx), "u", "api")
    with pytest.raises(UserError, match="out of GPU memory at 512x768 .*the model was unloaded"):
        job.outcome()
    assert unloaded == [True]


def test_failed_logins_lock_the_address_out_with_retry_after():
    """The API shares the page's throttled logins: after repeated failures an address waits (429)."""
    from fastapi import HTTPException

    now = [0.0]
    logins = Logins([("ann", "pw")], clock=lambda: now[0])
    auth = ApiAuth(logins.check, None, logins.retry_after)

    def caller(host, user, password):
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return SimpleNamespace(client=SimpleNamespace(host=host), headers={"authorization": f"Basic {token}"})

    codes = []
    for _ in range(6):
        try:
            auth.owner(caller("192.0.2.9", "ann", "wrong"))
        except HTTPException as exc:
            codes.append((exc.status_code, (exc.headers or {}).get("Retry-After")))
    assert codes[:5] == [(401, None)] * 5 and codes[5] == (429, "1")
    with pytest.raises(HTTPException) as locked:
        auth.owner(caller("192.0.2.9", "ann", "pw"))  # even the right password waits
    assert locked.value.status_code == 429
    assert auth.owner(caller("192.0.2.10", "ann", "pw")) == "ann"  # another address is not affected
    now[0] += 2
    assert auth.owner(caller("192.0.2.9", "ann", "pw")) == "ann"
