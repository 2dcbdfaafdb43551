"""Canny edges with OpenCV: white edges on black, as the control models were trained on."""

from __future__ import annotations

import numpy as np


def canny_map(image, low: int, high: int):
    """PIL image -> RGB edge map of the same size; `low`/`high` are the hysteresis thresholds."""
    import cv2
    from PIL import Image

    edges = cv2.Canny(np.asarray(image.convert("L")), int(low), int(high))
    return Image.fromarray(edges, "L").convert("RGB")
