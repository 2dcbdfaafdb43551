"""Generation on the tiny model without the VAE decode (most of a tiny image's time): final latents only."""

from unittest import mock

import numpy as np


def latents(engine, settings) -> list[np.ndarray]:
    """Each image's final latents [16, h, w], through the whole engine path except the decode."""
    with mock.patch("models.z_image.pipeline.decode", lambda model, lat: list(lat.cpu().numpy())):
        return [r.image for r in engine.generate(settings)]
