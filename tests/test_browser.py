"""The page in a real headless Chromium (Debian's package, driven by playwright): generate, and log in."""

import shutil

import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def serve(engine, tmp_path, auth=None):
    from app.web.page import build_ui
    from tests.test_ui import free_port

    demo = build_ui(engine, output_dir=tmp_path / "out")
    port = free_port()
    demo.queue(default_concurrency_limit=1).launch(server_port=port, prevent_thread_lock=True, auth=auth,
                                                   allowed_paths=[str(tmp_path / "out")], quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture
def browser(tmp_path):
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_type_prompt_click_generate_get_image(engine, tmp_path, browser):
    demo, url = serve(engine, tmp_path)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        page.get_by_text("Ready.").wait_for(timeout=30_000)  # the page's load event has answered
        page.get_by_label("Model type").click()
        page.get_by_role("option", name="Tiny test model").click()  # names in the list, ids in their tooltips
        page.get_by_text("z_image_tiny_test").first.wait_for(timeout=30_000)  # the switch has applied its defaults
        page.locator("#field-prompt textarea").fill("a small red house")
        page.locator("#field-num_inference_steps input[type=number]").fill("3")
        page.locator("#generate").click()
        image = page.locator("#gallery img").first
        image.wait_for(timeout=90_000)
        page.wait_for_function("() => document.querySelector('#gallery img').naturalWidth > 0")
        size = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert size == [256, 256]
        assert "seed" in page.locator("#info").inner_text()
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert Image.open(shot).size[0] == 1400
        outputs = list((tmp_path / "out").glob("*.png"))
        assert len(outputs) == 1
    finally:
        demo.close()


def test_login_wrong_password_refused_right_accepted(engine, tmp_path, browser):
    demo, url = serve(engine, tmp_path, auth=[("ann", "s3cret")])
    try:
        page = browser.new_page()
        page.goto(url)
        page.get_by_label("username").fill("ann")
        page.get_by_label("password").fill("wrong")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for(timeout=15_000)
        page.get_by_label("username").fill("ann")
        page.get_by_label("password").fill("s3cret")
        page.get_by_role("button", name="Login").click()
        page.locator("#generate").wait_for(timeout=30_000)
    finally:
        demo.close()
