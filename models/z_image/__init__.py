"""Z-Image family: Turbo, base, Fun-ControlNet-Union and TwinFlow."""

from models.z_image.handler import HANDLER

__all__ = ["HANDLER"]
