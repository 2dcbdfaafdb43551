"""Wan2GP's model JSONs as they ship (its `defaults/*.json` and users' `finetunes/`), read into this app's fields.

Both apps share the layout: a "model" block (files, architecture) and default settings beside it. What differs:
- setting names: Wan2GP's `NAG_scale`/`NAG_tau`/`NAG_alpha`, `control_net_weight`, `repeat_generation`,
  `sample_solver` (its values are family-specific: the family handler translates them);
- model fields: `VAE_URLs` (other families' spelling), `attention` (a kernel per GPU generation, e.g.
  {"<89": "sdpa"}, read here at load time), and family conventions (`modules` as a list of lists,
  `unified_solver`, components left out) that the family handler's `adopt_wan2gp` reads;
- fields with no meaning here (UI hints such as `visible`, video settings such as `video_length`): accepted and
  reported once as ignored.
"""

from __future__ import annotations

import difflib
import re

from engine.errors import ModelDefinitionError

SETTING_NAMES = {"NAG_scale": "nag_scale", "NAG_tau": "nag_tau", "NAG_alpha": "nag_alpha",
                 "control_net_weight": "control_weight", "repeat_generation": "count"}
MODEL_NAMES = {"VAE_URLs": "vae_URLs"}
_ARCH_CONDITION = re.compile(r"^\s*(>=|<=|>|<|=)?\s*\d+\s*$")


def rename(data: dict, names: dict) -> dict:
    """`data` with Wan2GP's names replaced by this app's (this app's own spelling wins when both are given)."""
    out = dict(data)
    for theirs, ours in names.items():
        if theirs in out:
            value = out.pop(theirs)
            out.setdefault(ours, value)
    return out


def ignored_note(fields, known, where: str) -> str | None:
    """One line naming fields that have no meaning here, with a likely intended name for close misspellings."""
    if not fields:
        return None
    parts = []
    for name in sorted(fields):
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
        parts.append(f"{name} (did you mean {close[0]}?)" if close and close[0] != name else name)
    return f"{where}: ignored (no meaning in this app): {', '.join(parts)}"


def check_attention(value, where: str) -> None:
    """Wan2GP's `attention` field: {"<89": "sdpa", ">=89": "sage", ...}; a broken one is refused."""
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ModelDefinitionError(f"{where}: \"attention\" must map GPU generations to kernel names, "
                                   "e.g. {\"<89\": \"sdpa\"}")
    for condition in value:
        if not all(_ARCH_CONDITION.match(part) for alt in condition.split("+") for part in alt.split("&")):
            raise ModelDefinitionError(f"{where}: \"attention\" condition {condition!r} is not a GPU generation "
                                       "test such as \"<89\", \">=80&<90\" or \"75+120\"")


def attention_for(value: dict | None, capability: tuple[int, int] | None) -> str | None:
    """The kernel a model's `attention` map picks for a GPU of `capability` (major, minor), as Wan2GP reads it
    (generation 89 = compute capability 8.9; '+' is or, '&' is and); None when nothing matches."""
    if not value or capability is None:
        return None
    arch = capability[0] * 10 + capability[1]

    def holds(cond: str) -> bool:
        m = re.match(r"\s*(>=|<=|>|<|=)?\s*(\d+)", cond)
        op, n = (m.group(1) or "="), int(m.group(2))
        return {"=": arch == n, ">=": arch >= n, "<=": arch <= n, ">": arch > n, "<": arch < n}[op]

    for condition, kernel in value.items():
        if any(all(holds(c) for c in alt.split("&")) for alt in condition.split("+") if alt.strip()):
            return kernel
    return None
