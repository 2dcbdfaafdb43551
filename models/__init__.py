"""Model families: one package per family, each exposing a ``HANDLER``; `families()` finds them."""

from __future__ import annotations

import importlib
import pkgutil


def families() -> list:
    """The handler of every family package under models/ (each package's HANDLER)."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        handler = getattr(importlib.import_module(f"{__name__}.{info.name}"), "HANDLER", None)
        if handler is not None:
            found.append(handler)
    return found
