"""The page as people use it, in a real headless Chromium (issue 17): results that append and survive a reload,
Ctrl+Enter, errors that stay, the status in view while scrolled (desktop and phone), restoring a control PNG
dropped anywhere (and the reverse), reuse seed, the History tab opening an image of a previous server run, a
download cancelled against a stand-in hub, contrast computed from the page's CSS, focus and Tab order, and the
LoRA cards on a phone. Every wait is for a condition, bounded."""

from __future__ import annotations

import base64
import json
import re

import pytest
from PIL import Image

from tests.test_browser import ARGS, CHROMIUM, serve  # noqa: F401

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")

DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
TINY, CONTROL = "z_image_tiny_test", "z_image_control_tiny_test"
WAIT = 90_000  # ms: the longest any one step may take on a busy machine

CAPTIONS = "() => [...document.querySelectorAll('#gallery .thumbnail-lg img')].map(i => i.alt)"
IDLE = "() => document.querySelector('#generate').textContent.trim() === 'Generate'"


@pytest.fixture(scope="module")
def chromium():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(engine, tmp_path_factory):
    demo, url = serve(engine, tmp_path_factory.mktemp("page"))
    yield demo, url
    demo.close()


def opened(browser, url, viewport=DESKTOP, context=None, before=None):
    page = (context or browser).new_page()
    page.set_viewport_size(viewport)
    if before:
        before(page)
    page.goto(url)
    page.get_by_text("Ready.").wait_for(timeout=WAIT)  # the load event has answered: settings are in place
    return page


def number(page, field: str, value) -> None:
    box = page.locator(f"#field-{field} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


def generated(page, count: int) -> list[str]:
    """Wait until the gallery holds `count` images and the job is over; its captions, newest first."""
    page.wait_for_function(f"() => ({CAPTIONS})().length >= {count}", timeout=WAIT)
    page.wait_for_function(IDLE, timeout=WAIT)
    return page.evaluate(CAPTIONS)


def drop_png(page, path) -> None:
    """A PNG dropped on the page's title, as a file dragged from the desktop arrives."""
    data = base64.b64encode(path.read_bytes()).decode()
    page.evaluate("""([data, name]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, { type: "image/png" }));
        const target = document.querySelector("#title");
        for (const type of ["dragenter", "dragover", "drop"])
            target.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: dt }));
    }""", [data, path.name])


def in_view(page, selector: str) -> bool:
    box = page.locator(selector).first.bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= -1 and box["y"] + min(box["height"], 40) <= size["height"] + 1


# ---- results, reload, Ctrl+Enter ------------------------------------------------------------------------------

def test_results_append_newest_first_survive_a_reload_and_stay_in_their_browser(served, chromium):
    demo, url = served
    context = chromium.new_context()
    page = opened(chromium, url, context=context)
    page.locator("#field-prompt textarea").fill("a lighthouse")
    number(page, "num_inference_steps", 2)
    number(page, "seed", 11)
    page.locator("#field-negative_prompt textarea").focus()  # a field further down: Ctrl+Enter works from any
    page.keyboard.press("Control+Enter")
    assert generated(page, 1) == ["seed 11"]
    number(page, "seed", 22)
    page.locator("#generate").click()
    assert generated(page, 2) == ["seed 22", "seed 11"]  # newest first
    assert not page.locator("#preview").is_visible()  # no noisy preview left over the results
    page.reload()
    page.get_by_text("Ready.").wait_for(timeout=WAIT)
    page.wait_for_function(f"() => ({CAPTIONS})().length === 2", timeout=WAIT)
    assert page.evaluate(CAPTIONS) == ["seed 22", "seed 11"]
    other = opened(chromium, url, context=chromium.new_context())  # another browser: its own, empty, results
    assert other.evaluate(CAPTIONS) == []
    context.close()


def test_reuse_seed_fills_the_seed_and_the_command_line_names_it(served, chromium):
    demo, url = served
    page = opened(chromium, url)
    page.locator("#field-prompt textarea").fill("a kettle")
    number(page, "num_inference_steps", 1)
    number(page, "seed", 4242)
    page.locator("#generate").click()
    generated(page, 1)
    page.locator("#result-random-seed").click()
    page.wait_for_function("() => document.querySelector('#field-seed input').value === '-1'", timeout=WAIT)
    page.locator("#result-reuse-seed").click()
    page.wait_for_function("() => document.querySelector('#field-seed input').value === '4242'", timeout=WAIT)
    command = page.locator("#result-command textarea").input_value()
    assert "--seed 4242" in command and "--prompt 'a kettle'" in command
    assert page.locator("#result-link a").get_attribute("href").startswith("gradio_api/file=")


def test_on_a_phone_the_new_result_comes_into_view_when_the_job_ends(served, chromium):
    """The results sit below the settings on a phone: the page brings the newest one into view."""
    demo, url = served
    page = opened(chromium, url, viewport=PHONE)
    page.locator("#field-prompt textarea").fill("a lighthouse")
    number(page, "num_inference_steps", 1)
    page.locator("#generate").click()
    assert not in_view(page, "#gallery")  # far below Generate
    page.wait_for_function(IDLE, timeout=WAIT)
    page.wait_for_function("() => { const i = document.querySelector('#gallery img'); if (!i) return false; "
                           "const r = i.getBoundingClientRect(); return r.top >= 0 && r.top < window.innerHeight; }",
                           timeout=WAIT)


# ---- errors ---------------------------------------------------------------------------------------------------

def test_an_error_stays_with_its_exact_text_and_details_until_the_next_action(served, engine, chromium):
    """The status area holds the message (a persistent element, not a toast): 20 s later by the page's own
    clock (fast-forwarded) it is still there, word for word; the next Generate replaces it."""
    from engine.errors import SettingsError

    demo, url = served
    with pytest.raises(SettingsError) as err:
        engine.settings_for(TINY, prompt="").validate()
    expected = str(err.value)
    page = opened(chromium, url, before=lambda p: p.clock.install())
    page.locator("#field-prompt textarea").fill("")
    page.locator("#generate").click()
    error = page.locator("#info .zi-error-text")
    error.wait_for(timeout=WAIT)
    assert error.inner_text() == expected
    page.clock.fast_forward(20_000)
    page.wait_for_function(IDLE, timeout=WAIT)
    assert error.is_visible() and error.inner_text() == expected
    assert page.locator(".toast-body").count() == 0  # no toast carried it (toasts go after 10 s)
    page.locator("#info summary").click()
    assert "action: generate" in page.locator("#info details").inner_text()
    page.locator("#field-prompt textarea").fill("now with a prompt")
    number(page, "num_inference_steps", 1)
    page.locator("#generate").click()
    page.wait_for_function("() => !document.querySelector('#info .zi-error')", timeout=WAIT)


# ---- the status in view ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_progress_time_left_and_cancel_stay_in_view_while_scrolled(served, chromium, viewport):
    demo, url = served
    page = opened(chromium, url, viewport=viewport)
    page.locator("#field-prompt textarea").fill("a long one")
    number(page, "num_inference_steps", 50)
    number(page, "seed", 5)
    page.locator("#generate").click()
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")  # to the bottom of the page
    page.wait_for_function("() => /Step \\d+\\/50/.test(document.querySelector('#info').textContent)",
                           timeout=WAIT)
    assert in_view(page, "#info") and in_view(page, "#stop")
    text = page.locator("#info").inner_text()
    assert "elapsed" in text
    assert re.search(r"Step \d+/50", page.locator("#generate").text_content())  # the button counts too
    page.locator("#stop").click()
    page.locator("#info").get_by_text("Stopped.").wait_for(timeout=WAIT)
    page.wait_for_function(IDLE, timeout=WAIT)


# ---- restore --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def control_engine(tiny_model_json, tmp_path_factory):
    from engine.engine import Engine
    from engine.registry import Registry
    from engine.weights.files import FileLocator
    from models import families
    from models.z_image.tiny import write_control_test_model

    control = write_control_test_model(tmp_path_factory.mktemp("control"))
    return Engine(Registry(families(), extra_files=[tiny_model_json[0], control]), FileLocator(offline=True))


def made_png(app, model_type, tmp_path, **values):
    """A PNG made by the page's own Generate handler (its pictures kept in the outputs folder by content)."""
    from tests.test_ui import FakeRequest, gallery, values_for

    frames = list(app.generate(model_type, values_for(app, model_type, num_inference_steps=1, **values),
                               request=FakeRequest()))
    return gallery(frames[-1])[0][0]


def test_a_dropped_control_png_opens_the_control_panel_with_its_picture_and_back(control_engine, tmp_path,
                                                                                  chromium):
    from pathlib import Path

    demo, url = serve(control_engine, tmp_path)
    try:
        app = demo.zimage_app
        picture = tmp_path / "pose.png"
        Image.new("RGB", (256, 256), (240, 200, 40)).save(picture)
        control_png = Path(made_png(app, CONTROL, tmp_path, prompt="follow me", seed=7, control_image=str(picture),
                                    control_mode="raw"))
        plain_png = Path(made_png(app, TINY, tmp_path, prompt="no control", seed=8))
        for png, name in ((control_png, "control.png"), (plain_png, "plain.png")):
            (tmp_path / name).write_bytes(png.read_bytes())
        page = opened(chromium, url)
        page.locator("#model-type input").click()
        page.get_by_role("option", name=app.engine.registry.get(TINY).name).click()
        page.locator("#control-panel").wait_for(state="hidden", timeout=WAIT)
        drop_png(page, tmp_path / "control.png")
        page.get_by_text("Settings restored from control.png").wait_for(timeout=WAIT)
        assert page.locator("#model-type input").input_value() == app.engine.registry.get(CONTROL).name
        page.locator("#field-control_image img").wait_for(state="visible", timeout=WAIT)  # open, with its picture
        assert page.locator("#field-prompt textarea").input_value() == "follow me"
        drop_png(page, tmp_path / "plain.png")
        page.get_by_text("Settings restored from plain.png").wait_for(timeout=WAIT)
        page.locator("#control-panel").wait_for(state="hidden", timeout=WAIT)
        page.locator("#generate").click()  # the hidden control picture must not be used
        page.wait_for_function("() => /image\\(s\\) in/.test(document.querySelector('#info').textContent)",
                               timeout=WAIT)
        from engine.outputs import read_png_settings

        newest = max((tmp_path / "out").glob("*.png"), key=lambda p: p.stat().st_mtime_ns)
        settings = read_png_settings(newest)[0]
        assert settings.model_type == TINY and settings.control_image == "" and settings.prompt == "no control"
        page.locator("#model-type input").click()  # and back on the control type: no stale picture
        page.get_by_role("option", name=app.engine.registry.get(CONTROL).name).click()
        page.locator("#control-panel").wait_for(state="visible", timeout=WAIT)
        assert page.locator("#field-control_image img").count() == 0
    finally:
        demo.close()


# ---- the History tab ------------------------------------------------------------------------------------------

def test_the_history_tab_opens_an_image_of_a_previous_server_run(engine, tmp_path, chromium):
    first, _ = serve(engine, tmp_path)
    try:
        made_png(first.zimage_app, TINY, tmp_path, prompt="a lighthouse at dusk", seed=31337)
        made_png(first.zimage_app, TINY, tmp_path, prompt="a red bicycle", seed=5)
    finally:
        first.close()
    demo, url = serve(engine, tmp_path)  # a new run of the server, on the same outputs folder
    try:
        page = opened(chromium, url)
        assert page.evaluate(CAPTIONS) == []  # a new browser: nothing of its own yet
        page.get_by_role("tab", name="History").click()
        page.wait_for_function("() => document.querySelectorAll('#history-gallery img').length === 2",
                               timeout=WAIT)
        assert "Page 1 of 1 (2 images)" in page.locator("#history-label").inner_text()
        page.locator("#history-query input, #history-query textarea").first.fill("lighthouse")
        page.locator("#history-query input, #history-query textarea").first.press("Enter")
        page.wait_for_function("() => document.querySelectorAll('#history-gallery img').length === 1",
                               timeout=WAIT)
        page.locator("#history-gallery img").first.click()
        page.locator("#hist-info").get_by_text("a lighthouse at dusk").wait_for(timeout=WAIT)
        page.locator("#hist-use-settings").click()
        page.wait_for_function("() => document.querySelector('#field-prompt textarea') && "
                               "document.querySelector('#field-prompt textarea').value === 'a lighthouse at dusk'",
                               timeout=WAIT)
        assert page.locator("#field-seed input").input_value() == "31337"
    finally:
        demo.close()


# ---- first run ------------------------------------------------------------------------------------------------

def test_a_download_started_on_the_page_can_be_cancelled(tmp_path, tiny_model_json, chromium, monkeypatch):
    import huggingface_hub.constants

    from tests.hub_standin import StandInHub
    from tests.test_first_run import BIG, REPO, hub_engine, hub_files

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    files = hub_files(tiny_model_json[1], slow_transformer=True)
    with StandInHub(files, slow={f"{REPO}/transformer.safetensors"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        engine = hub_engine(tmp_path, tiny_model_json)
        demo, url = serve(engine, tmp_path)
        try:
            page = opened(chromium, url)
            page.locator("#model-type input").click()
            page.get_by_role("option", name="Hub tiny").click()
            banner = page.locator("#first-run-text")
            banner.get_by_text("needs files that are not here yet").wait_for(timeout=WAIT)
            assert "20.5 GB" in banner.inner_text() and str((tmp_path / "ckpts").resolve()) in banner.inner_text()
            page.locator("#download").click()
            status = page.locator("#download-status")
            status.get_by_text("Downloading file 1 of 3: transformer.safetensors").wait_for(timeout=WAIT)
            page.wait_for_function("() => / of 41\\.9 MB/.test(document.querySelector('#download-status')"
                                   ".textContent)", timeout=WAIT)  # bytes arrived: the hub's size is known
            assert "all files:" in status.inner_text()
            page.locator("#download-cancel").click()
            status.get_by_text("Download cancelled").wait_for(timeout=WAIT)
            assert not (tmp_path / "ckpts" / "transformer.safetensors").exists()
            assert hub.sent[f"{REPO}/transformer.safetensors"] < BIG
            assert page.locator("#first-run").first.is_visible()  # still needed: the banner stays
        finally:
            demo.close()


# ---- accessibility --------------------------------------------------------------------------------------------

CONTRAST = """(selector) => {
  const parse = (s) => { const m = s.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const v = m[1].split(/[ ,/]+/).filter(Boolean).map(Number); return [v[0], v[1], v[2], v.length > 3 ? v[3] : 1]; };
  const lin = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
  const lum = (c) => 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2]);
  const over = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3])).concat([1]);
  const background = (el) => {  // the colour behind `el`: its backgrounds composited up to the page's
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    let colour = [255, 255, 255, 1];
    for (const layer of layers.reverse()) colour = over(layer, colour);
    return colour;
  };
  const ratio = (el) => { const bg = background(el); const fg = over(parse(getComputedStyle(el).color), bg);
    const [a, b] = [lum(fg) + 0.05, lum(bg) + 0.05]; return Math.max(a, b) / Math.min(a, b); };
  const texts = [];
  for (const el of document.querySelectorAll(selector + " *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const style = getComputedStyle(el);
    if (!own || !el.offsetParent || style.visibility === "hidden" || el.closest("[disabled], .hide, .hidden")) continue;
    texts.push([el.textContent.trim().slice(0, 40), Math.round(ratio(el) * 100) / 100]);
  }
  return texts;
}"""


def test_text_contrast_from_the_pages_css_is_at_least_4_5(served, chromium):
    demo, url = served
    page = opened(chromium, url)
    hint = page.locator("#field-enhance .info-text")  # the hint under a control (it measured 1.9:1)
    assert hint.is_visible()
    ratios = dict(page.evaluate(CONTRAST, "#field-enhance"))
    assert ratios[hint.inner_text().strip()[:40]] >= 4.5
    page.locator("#size-panel .label-wrap").first.click()  # a panel's hints and labels too
    measured = page.evaluate(CONTRAST, "#tab-generate")
    low = [(text, r) for text, r in measured if r < 4.5]
    assert len(measured) > 30 and not low, f"text under 4.5:1: {low}"


def test_keyboard_reaches_generate_early_with_a_visible_focus_ring_and_controls_have_labels(served, chromium):
    demo, url = served
    page = opened(chromium, url)
    page.locator("#title").click()  # start from the page itself
    stops = []
    for _ in range(12):
        page.keyboard.press("Tab")
        stops.append(page.evaluate("() => document.activeElement.id || document.activeElement.closest('[id]').id"))
        if stops[-1] == "generate":
            break
    assert "generate" in stops and len(stops) <= 6, stops  # tabs, model type, prompt, Generate
    ring = page.evaluate("() => { const s = getComputedStyle(document.activeElement); "
                         "return [s.outlineStyle, parseFloat(s.outlineWidth)]; }")
    assert ring[0] != "none" and ring[1] >= 2
    unlabelled = page.evaluate("""() => [...document.querySelectorAll(
        '#tab-generate input, #tab-generate textarea, #tab-generate button, #tab-generate select')]
      .filter((el) => el.offsetParent && el.type !== 'hidden')
      .filter((el) => !(el.getAttribute('aria-label') || el.getAttribute('aria-labelledby') || el.title ||
                        (el.labels && el.labels.length) || (el.tagName === 'BUTTON' && el.textContent.trim())))
      .map((el) => el.outerHTML.slice(0, 120))""")
    assert unlabelled == []


# ---- LoRA cards on a phone ------------------------------------------------------------------------------------

def test_lora_cards_triggers_and_strength_sliders_work_on_a_phone(lora_engine, tmp_path, chromium):
    from safetensors.numpy import load_file, save_file

    folder = lora_engine.lora_dirs["z_image"]
    kohya = folder / "kohya.safetensors"  # as kohya's sd-scripts write it: tag counts per dataset folder
    save_file(load_file(kohya), kohya, metadata={"ss_tag_frequency": json.dumps(
        {"10_inkstyle": {"inkstyle": 20, "black and white": 12, "sketch": 3}})})
    Image.new("RGB", (64, 64), (20, 20, 20)).save(folder / "kohya.png")  # its card's picture
    demo, url = serve(lora_engine, tmp_path)
    try:
        page = opened(chromium, url, viewport=PHONE)
        page.locator("#lora-panel .label-wrap").first.click()
        page.wait_for_function("() => document.querySelectorAll('#lora-cards img').length === 2", timeout=WAIT)
        page.locator("#lora-cards img").first.click()
        card = page.locator("#lora-card")
        card.get_by_text("inkstyle, black and white, sketch").wait_for(timeout=WAIT)
        page.locator("#field-prompt textarea").fill("a cat")
        page.locator("#lora-triggers").click()
        page.wait_for_function("() => document.querySelector('#field-prompt textarea').value === "
                               "'a cat, inkstyle, black and white, sketch'", timeout=WAIT)
        page.locator("#lora-add").click()
        strength = page.locator("#lora-active input[type=number]").first
        strength.wait_for(timeout=WAIT)
        strength.fill("0.5")
        strength.press("Tab")
        page.locator("#lora-panel").get_by_text("LoRAs: 1 active (kohya 0.5)").wait_for(timeout=WAIT)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]  # fits the phone
        page.locator("#lora-active .zi-lora-remove").first.click()
        page.locator("#lora-panel").get_by_text("LoRAs: none active").wait_for(timeout=WAIT)
    finally:
        demo.close()


from tests.test_lora_engine import lora_engine  # noqa: E402,F401 (fixture: a LoRA folder for the tiny model)
