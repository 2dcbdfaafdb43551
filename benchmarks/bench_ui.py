"""UI benchmark on the tiny model: what the web page adds over the CLI path, and how fast it reacts.

In one run: seconds per image through the engine directly (the CLI's path), through the page in headless
Chromium (click Generate -> image shown), and through the txt2img API; and the time from clicking Generate to
the first progress update on the page. Targets: page adds at most 0.3 s per image; first update under 1 s.
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

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

CLICK_AND_TIME = """(before) => new Promise(resolve => {
  const t0 = performance.now(); let first = null;
  const check = () => {
    const bar = document.querySelector('.progress-level-inner');
    const info = document.querySelector('#info .prose, #info [data-testid=markdown]');
    const text = info ? info.textContent.trim() : '';
    if (first === null && ((bar && bar.textContent.trim()) || text.startsWith('Step'))) first = performance.now() - t0;
    const img = document.querySelector('#gallery img');
    if (img && img.src !== before && img.complete && img.naturalWidth > 0) {
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
        with browser_page(chromium, url, model_json.stem, settings) as click:
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
def browser_page(chromium, url, model_type, settings):
    """Yields click(): generate on the page; returns seconds from the click to the first progress update."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page()
        page.goto(url)
        page.get_by_label("Model type").click()
        page.get_by_role("option", name=model_type).click()
        page.get_by_text("Tiny test model").first.wait_for(timeout=30_000)  # the switch has applied its defaults
        page.locator("#field-prompt textarea").fill(settings.prompt)
        page.locator("#field-seed input").fill("1")
        page.locator("#field-num_inference_steps input[type=number]").fill(str(settings.num_inference_steps))
        shown = "() => { const img = document.querySelector('#gallery img'); return img ? img.src : ''; }"

        def click():
            first, total = page.evaluate(CLICK_AND_TIME, page.evaluate(shown))
            if total is None:
                sys.exit("the page showed no image within 2 minutes: see the server's log above")
            return first / 1000 if first is not None else float("nan")

        yield click
        browser.close()


def report(cli, api, page, first, args):
    rows = [
        ("seconds per image, engine (CLI path)", f"{cli:.3f}", "", ""),
        ("seconds per image, web page (click -> shown)", f"{page:.3f}", f"+{page - cli:.3f} s", "<= +0.3 s"),
        ("seconds per image, txt2img API", f"{api:.3f}", f"+{api - cli:.3f} s", ""),
        ("click Generate -> first progress update", f"{first:.3f}", "", "< 1 s"),
    ]
    print(f"\nUI benchmark: tiny model, 256x256, {args.steps} steps, CPU, median of {args.repeats}\n")
    print(f"{'measure':<48}{'value':>10}{'added':>14}{'target':>12}")
    for r in rows:
        print(f"{r[0]:<48}{r[1]:>10}{r[2]:>14}{r[3]:>12}")
    print(json.dumps({"bench": "ui", "seconds_cli": round(cli, 4), "seconds_page": round(page, 4),
                      "seconds_api": round(api, 4), "page_added_seconds": round(page - cli, 4),
                      "first_progress_seconds": round(first, 4)}))


if __name__ == "__main__":
    main()
