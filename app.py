"""Z-Image Studio: `python app.py` launches the web UI; `python app.py --help` lists the commands."""

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from app.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
