"""The Train panel in a real headless Chromium: fill in a dataset and a name, start, see progress and the result,
and put the LoRA into the LoRA table."""

import pytest

from tests.test_browser import ARGS, CHROMIUM, browser, serve  # noqa: F401  (browser: a fixture)
from tests.train_data import MODEL, two_images, write_adapter

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")


def test_train_from_the_page_then_use_it(engine, tmp_path, browser, tiny_models, monkeypatch):  # noqa: F811
    monkeypatch.setitem(engine.lora_dirs, "z_image", tmp_path / "loras")
    data = two_images(tmp_path / "data")
    adapter = write_adapter(tmp_path / "adapter.safetensors", tiny_models["transformer"])
    demo, url = serve(engine, tmp_path)
    demo.zimage_app.train_ui.training_dir = tmp_path / "training"
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        page.get_by_role("tab", name="Train").click()
        page.get_by_text("Train a LoRA").click()
        page.locator("#train-name input, #train-name textarea").first.fill("browser")
        page.locator("#train-images input, #train-images textarea").first.fill(str(data))
        page.get_by_label("Train on").click()
        page.get_by_role("option", name=MODEL).click()
        page.get_by_label("Steps", exact=True).fill("3")
        page.get_by_label("Rank", exact=True).fill("2")
        page.get_by_text("More training settings").click()
        page.get_by_label("Training adapter").fill(str(adapter))
        page.get_by_label("Training adapter").press("Enter")
        page.get_by_role("checkbox", name="768").uncheck()
        page.get_by_role("checkbox", name="1024").uncheck()
        page.locator("#train-start").click()
        page.get_by_text("browser.safetensors").first.wait_for(timeout=120_000)
        assert "Done" in page.locator("#train-info").inner_text()
        page.locator("#train-use").click()
        from playwright.sync_api import expect

        page.get_by_role("tab", name="Generate").click()  # the LoRA panel is open there, with the new LoRA active
        expect(page.locator("#lora-active")).to_contain_text("browser.safetensors", timeout=30_000)
        assert (tmp_path / "loras" / "browser.safetensors").is_file()
    finally:
        demo.close()
        engine.apply_loras(engine.settings_for(MODEL, prompt="x"))
