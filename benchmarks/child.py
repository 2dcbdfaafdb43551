"""Measuring in a fresh process: a benchmark runs itself as a child (memory peaks need a clean process) and reads
the JSON the child prints on its last line."""

from __future__ import annotations

import json
import subprocess
import sys


def child_json(script: str, *args: str, env=None, check: bool = True) -> dict:
    """Run `python script args...` and return the JSON object of its last output line. A failing child ends the
    benchmark with its error (check=True), or comes back as {"error": its last error line}."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env)
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["failed"])[-1]
        if check:
            raise SystemExit(f"{script} {args[0] if args else ''} failed: {last}\n{out.stderr}")
        return {"error": last}
    return json.loads(out.stdout.strip().splitlines()[-1])
