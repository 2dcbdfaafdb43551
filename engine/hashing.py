"""File fingerprints: the sha256 a PNG records for its LoRAs and input pictures, a dataset for its images."""

from __future__ import annotations

import hashlib


def file_sha256(path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (a weight file never sits in memory whole)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
