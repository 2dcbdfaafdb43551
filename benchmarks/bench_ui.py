"""UI benchmark on the tiny model: what the web page adds over the CLI path, and how fast it reacts.

In one run: seconds per image through the engine directly (the CLI's path), through the page in headless
Chromium (click Generate -> image shown), and through the txt2img API; and the time from clicking Generate to
the first update of the page's status area. The page's results gallery first holds 200 images (this browser's
history, which survives reloads), so its cost is in the figures. Targets: the page adds at most 0.3 s per
image; first update under 0.2 s.
Needs Debian's chromium and the playwright package. Run: python benchmarks/bench_ui.py [--repeats 8]
The three paths take turns in each round, so a change in the machine's load affects them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HISTORY = 200  # images in the results gallery while measuring (all a browser keeps)
SESSION_MAX = 200
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

CLICK_AND_TIME = """() => new Promise(resolve => {
  // first: the status area shows the job running; total: the job's result shown (status done, newest image loaded)
  const t0 = performance.now(); let first = null;
  const check = () => {
    if (first === null && document.querySelector('#info .zi-running')) first = performance.now() - t0;
    const img = document.querySelector('#gallery img');
    if (first !== null && document.querySelector('#info .zi-done') && img && img.complete && img.naturalWidth > 0) {
      obs.disconnect(); resolve([first, performance.now() - t0]);
    }
  };
  setTimeout(() => { obs.disconnect(); resolve([first, null]); }, 120000);  // no image: reported, not hung
  const obs = new MutationObserver(check);
  obs.observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
  document.querySelector('#generate').click();
})"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--history", type=int, default=HISTORY, help="images in the results gallery while measuring")
    args = ap.parse_args()
    from gradio_client import Client

    from engine.engine import Engine
    from engine.weights.files import FileLocator
    from engine.registry import Registry
    from models import families
    from app.web.page import build_ui
    from models.z_image.tiny import write_test_model

    chromium = shutil.which("chromium")
    if not chromium:
        sys.exit("needs Debian's chromium (apt-get install chromium)")
    work = Path(tempfile.mkdtemp(prefix="zimage-ui-bench-"))
    model_json = write_test_model(work / "model")
    engine = Engine(Registry(families(), extra_files=[model_json]), FileLocator(offline=True), "float32", "cpu")
    settings = engine.settings_for(model_json.stem, prompt="a small red house", seed=1,
                                   num_inference_steps=args.steps)
    demo = build_ui(engine, output_dir=work / "out")
    port = free_port()
    demo.queue(default_concurrency_limit=1).launch(server_port=port, prevent_thread_lock=True, quiet=True,
                                                   allowed_paths=[str(work / "out")])
    url = f"http://127.0.0.1:{port}/"
    body = json.dumps({"seed": 1, "num_inference_steps": args.steps})
    times = {"cli": [], "api": [], "page": [], "first": []}
    try:
        client = Client(url, verbose=False)
        paths = {
            "cli": lambda: engine.save(engine.generate(settings), work / "cli"),
            "api": lambda: client.predict(prompt=settings.prompt, model_type=model_json.stem, settings=body,
                                          api_name="/txt2img"),
        }
        with browser_page(chromium, url, model_json.stem, settings, args.history) as click:
            paths["page"] = click
            for round_ in range(args.repeats + 1):  # interleaved, so machine load drifts alike; round 0 warms up
                for name, fn in paths.items():
                    t0 = time.perf_counter()
                    first = fn()
                    if round_:
                        times[name].append(time.perf_counter() - t0)
                        if name == "page":
                            times["first"].append(first)
    finally:
        demo.close()
    report(*(statistics.median(times[k]) for k in ("cli", "api", "page", "first")), args)


@contextmanager
def browser_page(chromium, url, model_type, settings, history):
    """Yields click(): generate on the page; returns seconds from the click to the first progress update."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page()
        page.goto(url)
        page.get_by_text("Ready.").wait_for(timeout=60_000)  # the page's load event has answered
        page.locator("#model-type input").click()
        page.get_by_role("option", name="Tiny test model").click()  # friendly names in the list
        page.get_by_text(model_type).first.wait_for(timeout=30_000)  # the switch has applied its defaults
        fill_history(page, history)
        page.locator("#field-prompt textarea").fill(settings.prompt)
        fill(page, "seed", 1)
        fill(page, "num_inference_steps", settings.num_inference_steps)

        def click():
            first, total = page.evaluate(CLICK_AND_TIME)
            if total is None:
                sys.exit("the page showed no image within 2 minutes: see the server's log above")
            return first / 1000 if first is not None else float("nan")

        yield click
        browser.close()


GALLERY = "() => document.querySelectorAll('#gallery .thumbnail-lg img').length"


def fill(page, field: str, value) -> None:
    box = page.locator(f"#field-{field} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


def fill_history(page, wanted: int = HISTORY):
    """The results gallery filled through the page itself: one-step batches until it holds `wanted`."""
    page.locator("#size-panel .label-wrap").first.click()
    for field, value in (("batch_size", 8), ("count", 13), ("num_inference_steps", 1)):
        fill(page, field, value)
    page.locator("#field-prompt textarea").fill("history filler")
    while page.evaluate(GALLERY) < min(wanted, SESSION_MAX):
        held = page.evaluate(GALLERY)
        page.locator("#generate").click()
        page.wait_for_function(f"() => document.querySelector('#info .zi-error') || ({GALLERY})() > {held} && "
                               "document.querySelector('#generate').textContent.trim() === 'Generate'",
                               timeout=600_000)
        if page.locator("#info .zi-error").count():
            sys.exit(f"filling the results gallery failed: {page.locator('#info').inner_text()}")
    for field, value in (("batch_size", 1), ("count", 1)):
        fill(page, field, value)
    print(f"results gallery holds {page.evaluate(GALLERY)} images", file=sys.stderr)


def report(cli, api, page, first, args):
    rows = [
        ("seconds per image, engine (CLI path)", f"{cli:.3f}", "", ""),
        ("seconds per image, web page (click -> shown)", f"{page:.3f}", f"+{page - cli:.3f} s", "<= +0.3 s"),
        ("seconds per image, txt2img API", f"{api:.3f}", f"+{api - cli:.3f} s", ""),
        ("click Generate -> first status update", f"{first:.3f}", "", "< 0.2 s"),
    ]
    print(f"\nUI benchmark: tiny model, 256x256, {args.steps} steps, CPU, median of {args.repeats}, "
          f"results gallery holding {args.history} images\n")
    print(f"{'measure':<48}{'value':>10}{'added':>14}{'target':>12}")
    for r in rows:
        print(f"{r[0]:<48}{r[1]:>10}{r[2]:>14}{r[3]:>12}")
    print(json.dumps({"bench": "ui", "seconds_cli": round(cli, 4), "seconds_page": round(page, 4),
                      "seconds_api": round(api, 4), "page_added_seconds": round(page - cli, 4),
                      "first_progress_seconds": round(first, 4)}))


if __name__ == "__main__":
    main()
