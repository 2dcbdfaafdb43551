"""The "LoRA from images" panel: Make writes the LoRA and picks it in the LoRA list; adding it ticks positive-only;
the page offers its recommended settings; bad input is a clear error; and once in a real browser."""

import shutil

import pytest

gr = pytest.importorskip("gradio")

from app.web.handlers import AppUI  # noqa: E402
from app.web.i2l_panel import ImageToLoraUI  # noqa: E402
from engine.weights.files import FileLocator  # noqa: E402
from models.z_image.i2l import tiny  # noqa: E402
from tests.i2l_files import write_picture  # noqa: E402
from tests.test_ui import FakeProgress, FakeRequest, values_for  # noqa: E402

MODEL = "z_image_tiny_test"


@pytest.fixture
def panel(engine, tmp_path, monkeypatch):
    tiny.write_files(tmp_path / "ckpts", "diffsynth")
    monkeypatch.setattr(engine, "locator", FileLocator(tmp_path / "ckpts", offline=True))
    monkeypatch.setitem(engine.lora_dirs, "z_image", tmp_path / "loras")
    app = AppUI(engine, tmp_path / "out")
    pictures = [str(write_picture(tmp_path / f"{i}.png", seed=i)) for i in range(2)]
    yield app, ImageToLoraUI(app), pictures
    engine.apply_loras(engine.settings_for(MODEL, prompt="x"))


def test_make_pick_add_offer_and_generate(panel, monkeypatch):
    app, ui, pictures = panel
    assert ui.files_text(MODEL).count("present") == 3
    progress = FakeProgress()
    out = ui.make(MODEL, pictures, "web style", "auto", False, FakeRequest(), progress)
    assert "Made **web style.safetensors**" in out["i2l_status"]
    assert out["lora_pick"]["value"] == "web style.safetensors"
    assert "web style.safetensors" in out["lora_pick"]["choices"]
    fractions = [v[0] / v[1] for v, _ in progress.calls if isinstance(v, tuple)]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 10
    assert any("DINOv3" in (desc or "") for _, desc in progress.calls)

    rows = app.on_add_lora("web style.safetensors", [], MODEL)["loras"]
    assert rows == [["web style.safetensors", 1.0, "", True]]  # the file's default: positive branch only

    offer = ui.on_pick(MODEL, "web style.safetensors")["i2l_offer"]
    assert offer["visible"] and "CFG 4, shift 8, 50 steps" in offer["value"]
    assert not ui.on_pick(MODEL, None)["i2l_offer"]["visible"]

    monkeypatch.setitem(app.engine.registry.types[MODEL].model, "architecture", "z_image_base")
    updates = ui.use_recommended(MODEL, "a lantern", rows, "web style.safetensors")
    assert updates["model_type"]["value"] == "z_image_base"  # the base model type this app ships
    assert (updates["guidance_scale"]["value"], updates["flow_shift"]["value"],
            updates["num_inference_steps"]["value"]) == (4.0, 8.0, 50)
    assert updates["loras"]["value"] == rows and updates["prompt"]["value"] == "a lantern"

    values = values_for(app, MODEL, prompt="a lantern", negative_prompt="fog", guidance_scale=4.0, seed=2,
                        num_inference_steps=2, width=256, height=256)
    values["loras"] = rows
    frames = list(app.generate(MODEL, values, request=FakeRequest(), progress=FakeProgress()))
    assert frames[-1]["used"]["loras"] == [{"name": "web style.safetensors", "strength": 1.0, "schedule": None,
                                            "positive_only": True}]


def test_bad_input_is_a_clear_error(panel):
    app, ui, pictures = panel
    with pytest.raises(gr.Error, match="no picture given"):
        ui.make(MODEL, [], "x", "auto", False, FakeRequest(), FakeProgress())
    with pytest.raises(gr.Error, match="give the new LoRA a name"):
        ui.make(MODEL, pictures, "", "auto", False, FakeRequest(), FakeProgress())
    ui.make(MODEL, pictures[:1], "once", "auto", False, FakeRequest(), FakeProgress())
    with pytest.raises(gr.Error, match="exists already"):
        ui.make(MODEL, pictures, "once", "auto", False, FakeRequest(), FakeProgress())


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine")
def test_in_a_browser_drop_name_make(panel, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    from tests.test_browser import ARGS, serve

    app, _, pictures = panel
    demo, url = serve(app.engine, tmp_path)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(url)
            page.get_by_role("tab", name="Train").click()
            page.get_by_text("LoRA from images").first.click()
            page.locator("#i2l-pictures input[type=file]").set_input_files(pictures)
            page.locator("#i2l-name textarea, #i2l-name input").first.fill("browser style")
            page.locator("#i2l-pictures").get_by_text("KB").nth(1).wait_for(timeout=30_000)  # both uploaded
            page.locator("#i2l-make").click()
            page.get_by_text("Made browser style.safetensors").wait_for(timeout=120_000)
            page.get_by_role("tab", name="Generate").click()
            page.locator("#lora-panel .label-wrap").first.click()
            page.locator("#i2l-offer").wait_for(state="visible", timeout=30_000)  # picked: its settings offered
            browser.close()
        assert (app.engine.lora_dirs["z_image"] / "browser style.safetensors").is_file()
    finally:
        demo.close()
