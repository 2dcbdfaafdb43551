"""The page's image panel and the API: a painted mask becomes a stored mask file, inpaint from the page keeps
pixels, per-result actions (use as input, inpaint, upscale), restore finds inputs by content, /txt2img takes
the image fields."""

import json

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from app.web import images_panel  # noqa: E402
from app.web.handlers import AppUI  # noqa: E402
from app.web.masks import mask_value, painted_mask  # noqa: E402
from engine.outputs import read_png_settings  # noqa: E402
from tests.test_ui import FakeProgress, FakeRequest, client, gallery, server, values_for  # noqa: E402,F401


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "photo.png"
    Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8)).save(path)
    return path


def editor_value(photo, box):
    """What Gradio's ImageEditor hands the handler: the background and the painted layers (RGBA)."""
    layer = np.zeros((256, 256, 4), np.uint8)
    left, top, right, bottom = box
    layer[top:bottom, left:right] = (255, 255, 255, 255)
    return {"background": Image.open(photo).convert("RGBA"), "layers": [Image.fromarray(layer, "RGBA")],
            "composite": None}


def run_page(app, values):
    frames = list(app.generate("z_image_tiny_test", values, request=FakeRequest(), progress=FakeProgress()))
    return gallery(frames[-1])[0][0]


def test_painted_mask_inpaints_and_keeps_the_rest(engine, tmp_path, photo):
    app = AppUI(engine, tmp_path / "out")
    values = values_for(app, "z_image_tiny_test", prompt="a window", seed=2, num_inference_steps=2,
                        init_image=str(photo), strength=1.0, mask_blur=0)
    values["mask_paint"] = editor_value(photo, (0, 0, 128, 256))
    out = run_page(app, values)
    settings, _ = read_png_settings(out)
    stored = tmp_path / "out" / "inputs"
    assert settings.mask.startswith(str(stored.resolve())) and settings.inputs["mask"]["name"].endswith(".png")
    mask = np.asarray(Image.open(settings.mask))
    assert mask[:, :128].min() == 255 and mask[:, 128:].max() == 0
    got, original = np.asarray(Image.open(out), dtype=int), np.asarray(Image.open(photo), dtype=int)
    assert np.array_equal(got[:, 128:], original[:, 128:]) and np.abs(got[:, :128] - original[:, :128]).max() > 10
    assert painted_mask({"background": None, "layers": [], "composite": None}) is None
    assert mask_value(engine, None, str(photo)) == str(photo)  # an uploaded mask file


def test_result_actions_and_restore(engine, tmp_path, photo):
    app = AppUI(engine, tmp_path / "out")
    values = values_for(app, "z_image_tiny_test", prompt="a cat", seed=1, num_inference_steps=2,
                        init_image=str(photo), strength=0.5)
    out = run_page(app, values)
    assert images_panel.use_as_input(app, out)["init_image"] == out  # the result's (hashed) copy
    assert images_panel.inpaint(app, out)["strength"] == 1.0
    with pytest.raises(gr.Error, match="not one of this page's results"):
        images_panel.use_as_input(app, str(photo))
    up = images_panel.upscale_result(app, out, "z_image_tiny_test", {"upscale": 1, "upscaler": "latent"},
                                     FakeRequest())
    big = gallery(up)[0][0]
    assert Image.open(big).size == (512, 512) and "512x512" in up["info"]
    assert np.array_equal(np.asarray(Image.open(big)),
                          np.asarray(Image.open(out).convert("RGB").resize((512, 512), Image.Resampling.LANCZOS)))
    # restore: the init image comes back from the input store, by content, even after the upload is gone
    photo.unlink()
    restored = app.on_restore(out)
    init = restored["init_image"]["value"]
    assert init and (tmp_path / "out" / "inputs").resolve() in __import__("pathlib").Path(init).parents


def test_api_takes_image_fields(server, photo):
    _, url, out = server
    from gradio_client import handle_file

    c = client(url)
    with pytest.raises(Exception, match="a picture is taken as an upload"):  # a server path is refused
        c.predict(prompt="x", model_type="z_image_tiny_test", settings=json.dumps({"init_image": str(photo)}),
                  api_name="/txt2img")
    paths = c.predict(prompt="a lighthouse", model_type="z_image_tiny_test",
                      settings=json.dumps({"seed": 3, "num_inference_steps": 2, "strength": 0.5,
                                           "outpaint": "0,0,16,0"}),
                      init_image=handle_file(str(photo)), api_name="/txt2img")
    settings, record = read_png_settings(paths[0])
    assert Image.open(paths[0]).size == (256, 272) and settings.strength == 0.5
    assert settings.inputs["init_image"]["name"] == "photo.png" and record["passes"][0]["steps"] == 1
