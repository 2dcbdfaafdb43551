"""The page's "Image in" panel: an input picture for img2img / inpaint / outpaint / upscale, a mask painted on
the page (Gradio's image editor, white brush) or uploaded, strength, outpaint margins, hires fix and upscaler;
and per-result actions on the clicked gallery picture: use as input, inpaint, upscale.

Fields come from the field table (group "images"); a painted mask is turned into a mask file in the input store
(engine.images.inputs) when a job is prepared, so its PNG can be reproduced.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine.errors import UserError
from engine.settings import BUILTIN_UPSCALERS

PRIVATE = dict(api_visibility="private")
GPU = dict(concurrency_id="gpu", concurrency_limit=1)


def build(app, page, fields) -> None:
    """The panel's components (in the page's left column)."""
    with page.add("images_panel", gr.Accordion("Image in: img2img, inpaint, outpaint, upscale", open=False)):
        gr.Markdown("Give a picture to change it (strength), paint white on it to repaint a part (inpaint), add "
                    "margins to extend it (outpaint), or make it bigger (upscale). Without a picture, upscale "
                    "runs the hires fix after text-to-image.")
        page.add("mask_paint", gr.ImageEditor(
            label="Paint the mask: white strokes on the input picture mark what to repaint (they win over a mask "
                  "file)", type="pil", sources=["upload", "clipboard"], height=320, elem_id="mask-paint",
            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed")))
        fields("images")
        page["upscaler"].choices = [(n, n) for n in (*BUILTIN_UPSCALERS, *app.engine.upscalers.names())]
    page["init_image"].upload(lambda path: path, page["init_image"], page["mask_paint"], **PRIVATE)


def _result_path(app, path) -> str:
    """A gallery picture's path: only this app's outputs (or Gradio's copies of them) are accepted."""
    from gradio.utils import get_upload_folder

    if not path:
        raise gr.Error("Click a result in the gallery first.")
    p = Path(str(path)).resolve()
    allowed = [app.output_dir.resolve(), Path(get_upload_folder()).resolve()]
    if not p.is_file() or not any(p.is_relative_to(a) for a in allowed):
        raise gr.Error("That picture is not one of this page's results.")
    return str(p)


def use_as_input(app, path) -> dict:
    return {"init_image": _result_path(app, path), "images_panel": gr.update(open=True)}


def inpaint(app, path) -> dict:
    path = _result_path(app, path)
    return {"init_image": path, "mask_paint": path, "strength": 1.0, "images_panel": gr.update(open=True)}


def upscale_result(app, path, model_type, values, request, history=None, status_name="info") -> dict:
    """The clicked result upscaled by the panel's factor (2 if it is 1) and upscaler (no model pass); it joins
    the top of this browser's results (`history`: its entries)."""
    from app.web import status
    from app.web.handlers import owner_of, reported
    from engine.merge import merge_settings
    from engine.outputs import read_png_settings

    try:
        path = _result_path(app, path)
    except gr.Error as exc:
        return {status_name: status.error(exc.message, status.details("upscale"))}
    with reported(app):
        try:
            base = read_png_settings(path)[0].to_dict()
        except UserError:
            base = {}
        upscaler = values.get("upscaler") or "lanczos"
        changes = {"init_image": path, "strength": 0.0, "mask": "", "outpaint": [0, 0, 0, 0],
                   "upscale": max(2.0, float(values.get("upscale") or 1)),
                   "upscaler": "lanczos" if upscaler == "latent" else upscaler,
                   "prompt": base.get("prompt") or "upscaled"}
        base = {k: v for k, v in base.items() if k not in ("init_image", "mask", "control_image", "inputs")}
        settings = merge_settings(app.engine, base.get("model_type") or model_type, base=base,
                                  changes=changes).settings
        req = app.engine.prepare(settings)
        *_, (paths, results) = app.jobs.run(lambda ctx: app._job(req, ctx), owner_of(request), "upscale")
        size = results[0].image.size
        shown, _ = app.add_results(paths, request, history)
        text = f"Upscaled to {size[0]}x{size[1]} with {settings.upscaler}"
        return {**shown, "info": status.finished(text), "tabs": gr.Tabs(selected="generate")}
    return {}
