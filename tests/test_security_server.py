"""Security and robustness of the served app (issue 18), against the real launch on 127.0.0.1 with the tiny
models: what a hostile client sends (crafted PNGs, forged paths, other sessions' stops, floods of logins
and jobs) and what it gets back. Each test reproduces a finding of the issue and checks it now holds."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

gr = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from tests.gradio_session import EventFailed, Session, sent_values  # noqa: E402

TINY, CONTROL = "z_image_tiny_test", "z_image_control_tiny_test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder: Path, model_jsons, *flags):
    """The app as `python app.py` serves it (app.web.launch), working in `folder` (its outputs/ there)."""
    from app.cli import build_parser
    from app.web.launch import launch

    args = build_parser().parse_args([*(a for j in model_jsons for a in ("--model-def", str(j))),
                                      "--checkpoints", str(folder / "ckpts"), "--server-port", str(free_port()),
                                      "--lora-dir-z-image", str(folder / "loras"),
                                      *flags])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        demo = launch(args, block=False)
    return demo, f"http://127.0.0.1:{args.server_port}"


@pytest.fixture(scope="module")
def models(tiny_model_json, tmp_path_factory):
    from models.z_image.tiny import write_control_test_model

    return [tiny_model_json[0], write_control_test_model(tmp_path_factory.mktemp("control"))]


@pytest.fixture(scope="module")
def served(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    demo, url = start(folder, models, "--max-upload-mb", "1", "--max-queued", "2")
    yield demo, url, folder
    demo.close()


def tiny(**values) -> dict:
    """The page's values for a quick tiny-model generation (the page starts on another type's size)."""
    return {"model_type": TINY, "prompt": "x", "num_inference_steps": 1, "width": 256, "height": 256, **values}


def png_bytes(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def crafted_png(settings: dict, record=None) -> bytes:
    """A PNG carrying settings the way this app writes them, with whatever values an attacker chose."""
    import io

    info = PngInfo()
    info.add_itxt("zimage_settings", json.dumps({"settings": settings, "record": record or {}}))
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def store_picture(outputs: Path, image) -> Path:
    """A picture kept in the outputs folder under its content hash, as an input store keeps it."""
    data = png_bytes(image)
    path = outputs / "inputs" / f"{hashlib.sha256(data).hexdigest()}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def files_in(value) -> list[dict]:
    """Every file reference in an event's output."""
    found = []
    if isinstance(value, dict):
        if "path" in value and ("url" in value or "meta" in value):
            found.append(value)
        for v in value.values():
            found += files_in(v)
    elif isinstance(value, list):
        for v in value:
            found += files_in(v)
    return found


# ---- High 1: restore never reads a server path ---------------------------------------------------------

def test_restore_of_a_crafted_png_returns_no_server_file(served):
    """A PNG whose settings name server files as its control picture and mask: the restore reply used to
    carry those files (ui_settings.json, logs, the source, weights); now it carries none, and says so."""
    demo, url, folder = served
    secret = folder / "ui_settings.json"
    secret.write_text('{"z_image": {"prompt": "another user\'s secret prompt"}}')
    (folder / "outputs").mkdir(exist_ok=True)
    guessable = folder / "outputs" / "2026-01-01_00-00-00_seed1.png"  # an output PNG, named by date and seed
    Image.new("RGB", (32, 32), (9, 9, 9)).save(guessable)
    page = Session(url, demo)
    for picture, mask in [("ui_settings.json", str(secret)), (str(guessable), "app.py"),
                          ("outputs/../ui_settings.json", "/etc/passwd")]:
        settings = {"model_type": CONTROL, "prompt": "restored", "control_image": picture, "mask": mask,
                    "control_mode": "raw"}
        out, notes = page.call("on_restore", {"restore": page.upload("crafted.png", crafted_png(settings))})
        assert files_in(out) == []
        assert "secret prompt" not in json.dumps(out)
        assert any("control picture was not restored" in (n or "") for n in notes)
        prompt = value_of(demo, out, "on_restore", "prompt")
        assert prompt == "restored"  # everything else is restored


def test_restore_keeps_a_picture_stored_by_content(served):
    demo, url, folder = served
    stored = store_picture(folder / "outputs", Image.new("RGB", (40, 24), (200, 10, 10)))
    page = Session(url, demo)
    settings = {"model_type": CONTROL, "prompt": "with its picture", "control_image": str(stored),
                "control_mode": "raw", "inputs": {"control_image": {"sha256": stored.stem, "name": "mine.png"}}}
    out, notes = page.call("on_restore", {"restore": page.upload("stored.png", crafted_png(settings))})
    (picture,) = files_in(value_of(demo, out, "on_restore", "control_image"))
    got = page.http.get(f"/gradio_api/file={picture['path']}")
    assert got.status_code == 200 and got.content == stored.read_bytes()
    assert not any("not restored" in (n or "") for n in notes)


def value_of(demo, out: list, handler: str, name: str):
    """The value an event's output gives component `name` (updates are dicts with a 'value')."""
    fn = next(f for f in demo.fns.values() if f.name == handler)
    comp = demo.zimage_page[name]
    item = out[fn.outputs.index(comp)]
    return item.get("value") if isinstance(item, dict) and item.get("__type__") == "update" else item


# ---- Medium 5: the API takes uploads, not server paths ---------------------------------------------------

def test_api_takes_pictures_as_uploads_and_refuses_every_path_alike(served, tmp_path):
    """`/txt2img` took any server path as control_image/mask and told "not found" from "not an image". Now
    every path outside the input store gets the same answer; an upload works."""
    demo, url, folder = served
    c = Client(url, verbose=False)
    Image.new("RGB", (64, 64), (0, 120, 0)).save(tmp_path / "photo.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    answers = set()
    for path in [str(tmp_path / "photo.png"), str(tmp_path / "notes.txt"), str(tmp_path / "missing.png"),
                 "/etc/passwd", "../../app.py", str(folder / "outputs" / "2026-01-01_00-00-00_seed1.png")]:
        with pytest.raises(Exception) as err:
            c.predict(prompt="x", model_type=CONTROL, api_name="/txt2img",
                      settings=json.dumps({"control_image": path, "control_mode": "raw", "num_inference_steps": 1}))
        answers.add(str(err.value))
    assert len(answers) == 1 and "taken as an upload, not as a path on the server" in answers.pop()
    (png,) = c.predict(prompt="x", model_type=CONTROL, settings=json.dumps({"control_mode": "gray",
                                                                              "num_inference_steps": 1}),
                       control_image=handle_file(str(tmp_path / "photo.png")), api_name="/txt2img")
    from engine.outputs import read_png_settings

    assert read_png_settings(png)[0].control_image  # the upload was used


def test_a_thin_strip_upload_is_refused_with_its_ratio(served, tmp_path):
    demo, url, _ = served
    Image.new("RGB", (1, 8000), (255, 0, 0)).save(tmp_path / "strip.png")  # about 110 bytes
    with pytest.raises(Exception, match="8000:1 strip"):
        Client(url, verbose=False).predict(prompt="x", model_type=CONTROL,
                                           settings=json.dumps({"control_mode": "raw", "num_inference_steps": 1}),
                                           control_image=handle_file(str(tmp_path / "strip.png")), api_name="/txt2img")


# ---- Medium 9: limits, the same on every front-end ---------------------------------------------------------

@pytest.mark.parametrize("settings, words", [
    ({"batch_size": 16}, "batch size 16 is above the limit of 8 images per pass (--max-batch)"),
    ({"count": 100}, "image count 100 is above the limit of 20 batches per job (--max-count)"),
    ({"num_inference_steps": 200}, f"steps 200: {TINY} takes 1 to 50 steps"),
    ({"batch_size": 2, "width": 4096, "height": 4096}, "32.0 megapixels in one pass, above the limit of 16.0"),
])
def test_api_limits_are_the_pages(served, settings, words):
    demo, url, _ = served
    with pytest.raises(Exception, match=words.replace("(", r"\(").replace(")", r"\)")):
        Client(url, verbose=False).predict(prompt="x", model_type=TINY, settings=json.dumps(settings),
                                           api_name="/txt2img")
    updates = demo.zimage_app.field_updates(demo.zimage_app.engine.settings_for(TINY))
    assert updates["batch_size"]["maximum"] == 8 and updates["count"]["maximum"] == 20  # the page's sliders


def test_uploads_above_the_size_limit_are_refused_without_login(served):
    demo, url, _ = served
    http = httpx.Client(base_url=url, timeout=60)
    big = http.post("/gradio_api/upload", files={"files": ("big.png", b"\0" * (2 * 2**20))})  # limit: 1 MB
    assert big.status_code == 413
    small = http.post("/gradio_api/upload", files={"files": ("small.png", png_bytes(Image.new("RGB", (8, 8))))})
    assert small.status_code == 200


def test_request_bodies_are_bounded(served):
    demo, url, _ = served
    page = Session(url, demo)
    r = page.http.post("/gradio_api/queue/join", content=b'{"data": ["' + b"x" * (5 * 2**20) + b'"]}',
                       headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_one_user_may_not_flood_the_queue(served):
    """A per-user cap on GPU jobs running or waiting (--max-queued 2 here), whatever the sessions."""
    demo, url, _ = served
    long = json.dumps({"num_inference_steps": 50, "width": 1024, "height": 1024})
    clients = [Client(url, verbose=False) for _ in range(3)]
    first = clients[0].submit(prompt="one", model_type=TINY, settings=long, api_name="/txt2img")
    second = clients[1].submit(prompt="two", model_type=TINY, settings=long, api_name="/txt2img")
    deadline = time.time() + 60
    while len(gpu_events(demo)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    try:
        third = clients[2].submit(prompt="three", model_type=TINY, settings=long, api_name="/txt2img")
        with pytest.raises(Exception, match="429"):
            third.result(timeout=60)
        with pytest.raises(EventFailed, match="429: .*2 generation.s. running or waiting already .at most 2 per user"):
            Session(url, demo).join("run", tiny())  # the page's Generate too
        assert Session(url, demo).join("on_model", {"model_type": TINY})  # other events are not capped
    finally:
        for c in clients[:2]:
            c.predict(api_name="/stop")
        for job in (first, second):
            try:
                job.result(timeout=120)
            except Exception:
                pass


def gpu_events(demo) -> list:
    from app.web.guard import gpu_events as events

    return events(demo)


# ---- High 2 and Medium 4: one job at a time, stops per owner, closed pages ------------------------------------

def test_page_and_api_jobs_on_a_cold_server_run_one_after_the_other(models, tmp_path):
    """The page's Generate and /txt2img at the same moment on a server that has loaded nothing yet: they
    used to run together (two loads at once, then "weights not loaded" until restart)."""
    demo, url = start(tmp_path, models)
    try:
        engine = demo.zimage_app.engine
        spans, real_generate = [], engine.generate

        def timed(*args, **kwargs):
            begun = time.monotonic()
            try:
                return real_generate(*args, **kwargs)
            finally:
                spans.append((begun, time.monotonic()))

        engine.generate = timed
        page = Session(url, demo)
        api = Client(url, verbose=False)
        results = {}

        def page_generate():
            results["page"] = page.call("run", tiny(prompt="from the page", num_inference_steps=3))

        thread = threading.Thread(target=page_generate)
        thread.start()
        results["api"] = api.predict(prompt="from the api", model_type=TINY,
                                     settings=json.dumps({"num_inference_steps": 3}), api_name="/txt2img")
        thread.join(180)
        assert results.get("page") and results["api"]
        (a0, a1), (b0, b1) = sorted(spans)
        assert a1 <= b0  # one after the other
        again = api.predict(prompt="next", model_type=TINY, settings=json.dumps({"num_inference_steps": 1}),
                            api_name="/txt2img")
        assert Image.open(again[0]).size == (256, 256)
    finally:
        demo.close()


def wait_running(demo, timeout=60):
    deadline = time.time() + timeout
    while demo.zimage_app.jobs.running is None and time.time() < deadline:
        time.sleep(0.05)
    return demo.zimage_app.jobs.running


def test_stop_is_per_owner_on_the_page(served):
    """One page's Stop used to stop another's job; now it says nothing of yours runs, and the owner's works."""
    demo, url, _ = served
    owner, other = Session(url, demo), Session(url, demo)
    done = {}
    thread = threading.Thread(target=lambda: done.setdefault("out", catch(
        lambda: owner.call("run", tiny(prompt="mine", num_inference_steps=50, width=1024, height=1024)))))
    thread.start()
    job = wait_running(demo)
    assert job is not None
    other.run("on_stop")
    assert job.state == "running" and not job.cancel_requested.is_set()
    owner.run("on_stop")
    thread.join(60)
    assert job.state == "cancelled"


def catch(fn):
    try:
        return fn()
    except EventFailed as exc:
        return exc


def test_a_closed_page_cancels_its_job(served):
    """A page closed mid-generation used to leave its job running to the end."""
    demo, url, _ = served
    page = Session(url, demo)
    page.join("run", tiny(prompt="left behind", num_inference_steps=50, width=1024, height=1024))
    stream = page.messages()
    for msg in stream:  # the page watches until its job runs ...
        if msg.get("msg") in ("progress", "process_generating"):
            break
    job = wait_running(demo)
    stream.close()  # ... then the tab is closed
    page.http.close()
    deadline = time.time() + 30
    while job.state == "running" and time.time() < deadline:
        time.sleep(0.1)
    assert job.state == "cancelled"


# ---- what is served, to whom --------------------------------------------------------------------------------

def test_outputs_are_not_served_under_their_names(served):
    demo, url, folder = served
    c = Client(url, verbose=False)
    (copy,) = c.predict(prompt="mine", model_type=TINY, settings=json.dumps({"num_inference_steps": 1}),
                        api_name="/txt2img")
    (original,) = sorted((folder / "outputs").glob("*_seed*.png"), key=lambda p: p.stat().st_mtime)[-1:]
    http = httpx.Client(base_url=url, timeout=30)
    for path in (original, original.relative_to(folder)):
        assert http.get(f"/gradio_api/file={path}").status_code == 403
    assert Path(copy).read_bytes() == original.read_bytes()  # the caller got its image (a hashed copy)


def test_a_forged_gallery_click_reads_nothing(served, tmp_path):
    """The gallery click's data comes from the browser; its path used to be read as a PNG, anywhere."""
    demo, url, folder = served
    page = Session(url, demo)
    png = tmp_path / "elsewhere.png"
    png.write_bytes(crafted_png({"model_type": TINY, "prompt": "private prompt"}))
    answers = set()
    for path in (str(png), "/etc/passwd", "/nonexistent.png"):
        try:
            out, _ = page.call("on_select", event_data={"index": 0, "value": {"image": {"path": path}}})
            answer = json.dumps(out)
        except EventFailed as exc:  # Gradio refuses a path outside its cache itself
            answer = str(exc).replace(path, "PATH")
        assert "private prompt" not in answer
        answers.add(answer)
    assert len(answers) == 1  # the same answer whether the file exists, is a PNG, or not


def test_page_encoder_and_vae_paths_stay_in_the_model_folders(served, tmp_path):
    """A text encoder or VAE typed on the page: only inside the model folders, one answer for the rest;
    and it applies to that job only (API calls keep working)."""
    demo, url, folder = served
    page = Session(url, demo)
    answers = set()
    for path in ("/etc/passwd", "/nonexistent", str(tmp_path), "../../"):
        with pytest.raises(EventFailed) as err:
            page.call("run", tiny(vae=path))
        answers.add(str(err.value).replace(path, "PATH"))
    assert len(answers) == 1 and "not a file or folder in the model folders" in answers.pop()
    assert Client(url, verbose=False).predict(prompt="x", model_type=TINY, api_name="/txt2img",
                                              settings=json.dumps({"num_inference_steps": 1}))


def test_remembered_settings_stay_in_their_browser(served):
    """ui_settings.json handed the last user's prompt to the next session; now each browser keeps its own."""
    demo, url, folder = served
    first, second = Session(url, demo), Session(url, demo)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*.json")}
    first.call("run", tiny(prompt="first user's prompt"))
    [stored] = sent_values(first.frames, first.fn("run").outputs.index(demo.zimage_page["memory"]))
    assert stored[TINY]["prompt"] == "first user's prompt"  # goes to the first browser's local storage
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.json")} == before  # nothing kept on the server
    loaded, _ = second.call("on_load", {"model_type": TINY, "memory": {}})
    assert value_of(demo, loaded, "on_load", "prompt") != "first user's prompt"
    again, _ = first.call("on_load", {"model_type": TINY, "memory": stored})
    assert value_of(demo, again, "on_load", "prompt") == "first user's prompt"
    hostile = {TINY: {"prompt": "p", "control_image": "/etc/passwd", "width": "huge"}}
    out, _ = second.call("on_load", {"model_type": TINY, "memory": hostile})
    assert files_in(out) == [] and value_of(demo, out, "on_load", "width") == 256  # damaged: the defaults


# ---- Medium 8 and Low: logins ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def logins_file(tmp_path_factory) -> Path:
    """As Windows Notepad saves it: a UTF-8 byte order mark before the first user."""
    path = tmp_path_factory.mktemp("auth") / "logins.txt"
    path.write_bytes("\ufeffann:first pass\n# friends\nbob:s3cret:colon\n".encode("utf-8"))
    return path


@pytest.fixture(scope="module")
def guarded(models, logins_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("guarded")
    demo, url = start(folder, models, "--auth-file", str(logins_file))
    yield demo, url, folder
    demo.close()


def logged_in(url, demo, user, password) -> Session:
    session = Session(url, demo)
    assert session.login(user, password).status_code == 200
    return session


def test_the_first_user_of_a_file_with_a_byte_order_mark_can_log_in(guarded):
    demo, url, _ = guarded
    logged_in(url, demo, "ann", "first pass")
    logged_in(url, demo, "bob", "s3cret:colon")


def test_routes_that_act_on_jobs_need_a_login(guarded):
    """With --auth, POST /gradio_api/cancel (and reset, stream, heartbeat) acted without a login."""
    demo, url, _ = guarded
    anonymous = httpx.Client(base_url=url, timeout=30)
    body = {"session_hash": "someone", "fn_index": 0, "event_id": "0" * 32}
    assert anonymous.post("/gradio_api/cancel", json=body).status_code == 401
    assert anonymous.post("/gradio_api/reset", json={"event_id": "0" * 32}).status_code == 401
    assert anonymous.post(f"/gradio_api/stream/{'0' * 32}/close").status_code == 401
    assert anonymous.get("/gradio_api/heartbeat/someone").status_code == 401
    assert anonymous.post("/gradio_api/upload", files={"files": ("x.png", b"x")}).status_code == 401
    member = logged_in(url, demo, "ann", "first pass")
    assert member.http.post("/gradio_api/cancel", json=body).status_code == 200


def test_gradio_client_with_a_login_still_generates(guarded):
    demo, url, _ = guarded
    (png,) = Client(url, auth=("bob", "s3cret:colon"), verbose=False).predict(
        prompt="x", model_type=TINY, settings=json.dumps({"num_inference_steps": 1}), api_name="/txt2img")
    assert Image.open(png).size == (256, 256)


def test_lora_presets_are_per_user_with_logins(guarded):
    """Any client could write (and overwrite) the presets; with logins each user saves their own."""
    demo, url, folder = guarded
    ann, bob = (logged_in(url, demo, u, p) for u, p in (("ann", "first pass"), ("bob", "s3cret:colon")))
    save_preset(ann, demo, "my set", [["style.safetensors", 0.5, ""]])
    save_preset(bob, demo, "my set", [["style.safetensors", 1.5, ""]])  # the same name: bob's own
    assert load_preset(ann, demo, "my set") == [["style.safetensors", 0.5, "", False]]  # 4th: positive only
    assert load_preset(bob, demo, "my set") == [["style.safetensors", 1.5, "", False]]
    save_preset(ann, demo, "only ann", [["style.safetensors", 1.0, ""]])
    with pytest.raises(EventFailed, match="only ann"):  # not in bob's list, and not in his presets
        load_preset(bob, demo, "only ann")
    shared = demo.zimage_app.lora_folder(TINY) / "presets"
    assert not list(shared.glob("*.json"))  # nothing written where everyone reads


def save_preset(session: Session, demo, name: str, rows):
    fn = session.fn("on_save_preset")
    comps = {n: c for n, c in demo.zimage_page.comps.items()}
    data = []
    for comp in fn.inputs:  # model type, the name box, the LoRA table, the snippet box
        if comp is comps["model_type"]:
            data.append(TINY)
        elif comp is comps["loras"]:
            data.append({"headers": ["LoRA", "strength", "schedule"], "data": rows})
        elif getattr(comp, "label", "") == "Save as preset":
            data.append(name)
        else:
            data.append("")
    return raw_call(session, fn, data)


def load_preset(session: Session, demo, name: str):
    fn = session.fn("on_load_preset")
    out = raw_call(session, fn, [TINY, name, "a prompt"])
    return out[0]["data"] if isinstance(out[0], dict) and "data" in out[0] else out[0]


def raw_call(session: Session, fn, data: list):
    body = {"data": data, "fn_index": fn._id, "session_hash": session.hash, "event_data": None}
    r = session.http.post("/gradio_api/queue/join", json=body)
    assert r.status_code == 200, r.text
    event_id = r.json()["event_id"]
    for msg in session.messages():
        if msg.get("event_id") == event_id and msg.get("msg") == "process_completed":
            if not msg.get("success"):
                raise EventFailed(msg["output"].get("error"))
            return msg["output"]["data"]


def test_failed_logins_are_throttled_per_client(models, logins_file, tmp_path):
    """60 wrong passwords took 0.27 s. Now, after 5 failures from an address, it must wait: even the right
    password is refused (429, with Retry-After) until the lock-out ends."""
    demo, url = start(tmp_path, models, "--auth-file", str(logins_file))
    try:
        http = httpx.Client(base_url=url, timeout=30)
        codes = [http.post("/login", data={"username": "ann", "password": f"guess {i}"}).status_code
                 for i in range(7)]
        assert codes[:5] == [400] * 5 and codes[5:] == [429, 429]  # the fifth failure locks for 1 s
        right = http.post("/login", data={"username": "ann", "password": "first pass"})
        assert right.status_code == 429 and int(right.headers["retry-after"]) >= 1
        assert "too many failed logins" in right.json()["detail"]
        logins = demo.zimage_logins  # counted for this client's address, not for everyone
        assert logins.retry_after("127.0.0.1") > 0 and logins.retry_after("10.0.0.9") == 0
    finally:
        demo.close()


def test_listen_warning_only_for_addresses_others_reach(models, tmp_path, capsys):
    from app.auth import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST",
                                  "::1%lo"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.20", "example.com", ""]))
    demo, _ = start(tmp_path, models, "--server-name", "LOCALHOST")
    demo.close()
    assert "WARNING" not in capsys.readouterr().err


# ---- logins, without a server -----------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_lockout_grows_per_client_and_a_success_clears_it():
    from app.auth import Logins

    clock = Clock()
    logins = Logins([("ann", "pw")], clock=clock)
    for _ in range(4):
        assert not logins.check("ann", "wrong", "10.0.0.1")
    assert logins.retry_after("10.0.0.1") == 0
    assert not logins.check("ann", "wrong", "10.0.0.1")
    assert logins.retry_after("10.0.0.1") == 1.0
    assert not logins.check("ann", "pw", "10.0.0.1")  # locked: even the right password
    assert logins.check("ann", "pw", "10.0.0.2")  # another client is not affected
    clock.now += 1.01
    assert not logins.check("ann", "wrong", "10.0.0.1") and logins.retry_after("10.0.0.1") == 2.0
    clock.now += 2.01
    assert not logins.check("nobody", "pw", "10.0.0.1") and logins.retry_after("10.0.0.1") == 4.0
    clock.now += 4.01
    assert logins.check("ann", "pw", "10.0.0.1") and logins.retry_after("10.0.0.1") == 0
    for _ in range(4):
        logins.check("ann", "wrong", "10.0.0.1")
    assert logins.retry_after("10.0.0.1") == 0  # the success cleared the record


def test_unknown_users_are_compared_like_known_ones(monkeypatch):
    """Unknown users answered faster than known ones: both now compare one digest in constant time."""
    import hmac

    from app.auth import Logins

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((len(a), len(b))) or real(a, b))
    logins = Logins([("ann", "a much longer password than the guess")])
    assert not logins.check("ann", "short", "c1")
    assert not logins.check("nobody", "short", "c2")
    assert logins.check("ann", "a much longer password than the guess", "c3")
    assert calls == [(32, 32)] * 3


@pytest.mark.parametrize("content, words", [
    ("ann:one\nbob:two\nann:three\n".encode(), "line 3: user 'ann' is given again .first in .* line 1"),
    ("ann:one\n".encode() + "bób:two\n".encode("latin-1"), "line 2: not UTF-8 text"),
    (b"\xef\xbb\xbf# only a comment\n", "no USER:PASSWORD lines"),
])
def test_auth_file_mistakes_are_one_line(tmp_path, capsys, content, words):
    from app.cli import main

    path = tmp_path / "logins.txt"
    path.write_bytes(content)
    assert main(["--auth-file", str(path), "--server-port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(words, err)


def test_auth_given_twice_on_the_command_line_and_in_the_file(tmp_path):
    from app.auth import parse_logins
    from engine.errors import SettingsError

    (tmp_path / "f").write_text("me:other\n")
    with pytest.raises(SettingsError, match="user 'me' is given again .first in --auth"):
        parse_logins("me:pw", str(tmp_path / "f"))


# ---- what held before, kept -------------------------------------------------------------------------------

def test_file_routes_serve_nothing_but_gradio_copies(served):
    demo, url, folder = served
    (folder / "notes.txt").write_text("server file")
    http = httpx.Client(base_url=url, timeout=30)
    for path in ["notes.txt", str(folder / "notes.txt"), "/etc/passwd", "../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd",
                 str(folder / "ckpts"), "app.py", "http://127.0.0.1:1/x"]:
        for route in (f"/gradio_api/file={path}", f"/gradio_api/file/{path}"):
            assert http.get(route).status_code in (403, 404), route
    svg = Session(url, demo).upload("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>1</script></svg>')
    got = http.get(f"/gradio_api/file={svg['path']}")
    assert got.status_code == 200 and got.headers["content-disposition"].startswith("attachment")
