"""Masks from the page: strokes painted in Gradio's image editor become a mask file in the input store."""

from __future__ import annotations

import numpy as np

from engine.errors import UserError


def mask_value(engine, editor, upload) -> str:
    """The mask file for a job: strokes painted in the editor (any layer), else the mask file given, else none.
    A painted mask is stored in the input store (by content)."""
    painted = painted_mask(editor)
    if painted is not None:
        if engine.inputs is None:
            raise UserError("no input store to keep the painted mask in")
        return str(engine.inputs.put_image(painted, "painted-mask.png")[0].resolve())
    return str(upload) if upload else ""


def painted_mask(editor):
    """PIL L (white = repaint) from the editor's layers: every painted pixel, whatever its colour; None when
    nothing is painted."""
    from PIL import Image

    if not isinstance(editor, dict):
        return None
    layers = [layer for layer in editor.get("layers") or [] if layer is not None]
    if not layers:
        return None
    alpha = None
    for layer in layers:
        a = np.asarray(layer.convert("RGBA"))[..., 3] > 0
        alpha = a if alpha is None else (alpha | a)
    if not alpha.any():
        return None
    background = editor.get("background")
    mask = Image.fromarray(alpha.astype(np.uint8) * 255, "L")
    if background is not None and background.size != mask.size:
        mask = mask.resize(background.size, Image.Resampling.NEAREST)
    return mask
