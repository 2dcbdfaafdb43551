"""The README's screenshots of the page: desktop (1440x900) and phone (390x844), made with the tiny test model.

Each shows what a user sees right after Generate: prompt and button at the top, the status area, the result.
Needs Debian's chromium and the playwright package. Run: python tools/screenshots.py [--out app/web/static]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORTS = {"desktop": {"width": 1440, "height": 900}, "phone": {"width": 390, "height": 844}}
PROMPT = "a small red house by a lake, morning light"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(work: Path):
    from app.web.page import build_ui
    from engine.engine import Engine
    from engine.registry import Registry
    from engine.weights.files import FileLocator
    from models import families
    from models.z_image.tiny import write_test_model

    model_json = write_test_model(work / "model")
    engine = Engine(Registry(families(), extra_files=[model_json]), FileLocator(offline=True), "float32", "cpu")
    demo = build_ui(engine, output_dir=work / "out")
    port = free_port()
    demo.queue(default_concurrency_limit=1).launch(server_port=port, prevent_thread_lock=True, quiet=True,
                                                   allowed_paths=[str(work / "out")])
    return demo, f"http://127.0.0.1:{port}/"


def shoot(browser, url: str, viewport: dict, path: Path) -> None:
    page = browser.new_page(viewport=viewport)
    page.goto(url)
    page.get_by_text("Ready.").wait_for(timeout=60_000)
    page.locator("#model-type input").click()
    page.get_by_role("option", name="Tiny test model").click()
    page.get_by_text("z_image_tiny_test").first.wait_for(timeout=30_000)
    page.locator("#field-prompt textarea").fill(PROMPT)
    page.locator("#generate").click()
    page.wait_for_function("() => /image\\(s\\) in/.test(document.querySelector('#info').textContent)",
                           timeout=120_000)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path))
    page.close()
    print(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "app" / "web" / "static")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("needs Debian's chromium (apt-get install chromium)")
    work = Path(tempfile.mkdtemp(prefix="zimage-shots-"))
    demo, url = serve(work)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            for name, viewport in VIEWPORTS.items():
                shoot(browser, url, viewport, args.out / f"page-{name}.png")
            browser.close()
    finally:
        demo.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
