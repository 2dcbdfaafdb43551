"""Giving a finished temporary file its final name without ever replacing an existing file.

The ONE rule behind every "new file" the app writes (PNG outputs, trained LoRAs, image-to-LoRA files): the
caller writes the whole file under a temporary name in the target folder, then `publish_new` links it to the
first free name. A hard link fails when the name is taken, even by a file made a moment ago by another writer;
where hard links are missing (some network or FAT file systems), the name is first claimed by an exclusive
create (which also fails when taken), then the finished file replaces that empty claim of ours.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable


def publish_new(tmp: Path, names: Iterable[Path]) -> Path | None:
    """Give the finished file `tmp` the first name in `names` that is free (same folder as `tmp`); None when
    every name is taken. `tmp` may be left behind (linked) or gone (renamed): the caller removes it if left."""
    links = True
    for final in names:
        try:
            if links:
                try:
                    os.link(tmp, final)
                    return Path(final)
                except FileExistsError:
                    raise
                except OSError:  # a filesystem without hard links
                    links = False
            os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            os.replace(tmp, final)
            return Path(final)
        except FileExistsError:
            continue
    return None
