"""The part of LoRA key names that every trainer shares: `<module stem><suffix>`.

Pure functions over tensor names: a file's keys are grouped by module stem, each group holding the roles
its suffixes name (down/up/alpha for LoRA, w1/w2 for LoKr, ...). Which model module a stem means is the
family's business (models/<family>/lora_keys.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# suffix -> role; the longest suffix wins, so ".lora_A.default.weight" is not read as ".weight"
SUFFIXES = {
    ".lora_A.weight": "down", ".lora_B.weight": "up", ".lora_B.bias": "up_bias",
    ".lora_A.default.weight": "down", ".lora_B.default.weight": "up", ".lora_B.default.bias": "up_bias",
    ".lora_down.weight": "down", ".lora_up.weight": "up", ".lora_mid.weight": "mid",
    ".lora.down.weight": "down", ".lora.up.weight": "up",  # dotted spelling of some Z-Image trainers
    ".alpha": "alpha", ".dora_scale": "dora_scale",
    ".lokr_w1": "w1", ".lokr_w1_a": "w1_a", ".lokr_w1_b": "w1_b", ".lokr_w2": "w2", ".lokr_w2_a": "w2_a",
    ".lokr_w2_b": "w2_b", ".lokr_t2": "t2",
    ".hada_w1_a": "h1_a", ".hada_w1_b": "h1_b", ".hada_w2_a": "h2_a", ".hada_w2_b": "h2_b",
    ".hada_t1": "t1", ".hada_t2": "t2",
    ".diff": "diff", ".diff_b": "diff_b",
}
_BY_LENGTH = sorted(SUFFIXES, key=len, reverse=True)
_TUCKER = "Tucker-decomposed (conv) layers are not supported"
UNSUPPORTED_ROLES = {"mid": _TUCKER, "t1": _TUCKER, "t2": _TUCKER,
                     "dora_scale": "DoRA is not supported: this layer is left out"}
KIND_NAMES = {"lora": "LoRA", "lokr": "LyCORIS LoKr", "loha": "LyCORIS LoHa", "full": "full delta"}


@dataclass
class Group:
    """The tensors a file holds for one module: role -> key."""

    stem: str
    roles: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str | None:
        """lora | lokr | loha | full, or None when the group is incomplete."""
        r = self.roles
        if "down" in r and "up" in r:
            return "lora"
        if ("w1" in r or {"w1_a", "w1_b"} <= r.keys()) and ("w2" in r or {"w2_a", "w2_b"} <= r.keys()):
            return "lokr"
        if {"h1_a", "h1_b", "h2_a", "h2_b"} <= r.keys():
            return "loha"
        if "diff" in r or "diff_b" in r:
            return "full"
        return None

    def problem(self) -> str | None:
        """Why this group cannot be applied, or None."""
        for role, why in UNSUPPORTED_ROLES.items():
            if role in self.roles:
                return why
        if self.kind is None:
            return f"incomplete (only {', '.join(sorted(self.roles))})"
        return None


def split_key(key: str) -> tuple[str, str] | None:
    """'x.lora_A.weight' -> ('x', 'down'); None for a name with no LoRA suffix."""
    for suffix in _BY_LENGTH:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], SUFFIXES[suffix]
    return None


def group_keys(keys) -> tuple[dict[str, Group], list[str]]:
    """(stem -> Group, keys that have no LoRA suffix)."""
    groups: dict[str, Group] = {}
    loose = []
    for key in keys:
        parts = split_key(key)
        if parts is None:
            loose.append(key)
            continue
        stem, role = parts
        groups.setdefault(stem, Group(stem)).roles[role] = key
    return groups, loose


def describe(groups: dict[str, Group], shapes: dict) -> str:
    """'LoRA, rank 16, 240 layers'-style summary for listings."""
    kinds: dict[str, int] = {}
    ranks = set()
    for g in groups.values():
        kind = g.kind
        if kind:
            kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "lora":
            ranks.add(shapes[g.roles["down"]][0])
    if not kinds:
        return "no LoRA layers"
    what = " + ".join(f"{KIND_NAMES[k]}" for k in sorted(kinds, key=kinds.get, reverse=True))
    rank = f", rank {'/'.join(str(r) for r in sorted(ranks))}" if 0 < len(ranks) <= 3 else ""
    return f"{what}{rank}, {sum(kinds.values())} layers"


def peft_alpha(metadata: dict, component: str = "transformer"):
    """A function module name -> alpha from diffusers/PEFT's `lora_adapter_metadata` header, or None.

    diffusers writes the PEFT config (r, lora_alpha, alpha_pattern, use_rslora) as JSON, its keys prefixed
    with the component; files without it scale by 1 (alpha = rank)."""
    from engine.jsontext import json_object_or_none

    data = json_object_or_none(metadata.get("lora_adapter_metadata"))
    if data is None:
        return None
    pre = f"{component}."
    conf = {k[len(pre):]: v for k, v in data.items() if k.startswith(pre)} or data
    alpha = conf.get("lora_alpha")
    if not _number(alpha):
        return None
    patterns = _patterns(conf.get("alpha_pattern"))
    rslora = bool(conf.get("use_rslora"))

    def alpha_for(module: str, rank: int) -> float:
        a = alpha
        for pattern, value in patterns:
            if pattern.fullmatch(module):
                a = value
                break
        return a * (rank ** 0.5) if rslora else a  # rsLoRA scales by alpha / sqrt(rank)

    return alpha_for


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _patterns(raw) -> list:
    """PEFT's alpha_pattern {regex: alpha} compiled; entries that are not a regex and a number are skipped."""
    out = []
    for pattern, value in (raw.items() if isinstance(raw, dict) else ()):
        try:
            if _number(value):
                out.append((re.compile(rf"(.*\.)?{pattern}"), value))
        except re.error:
            continue
    return out


def delta_shape(group: Group, shapes: dict) -> tuple[int, int | None] | None:
    """(out, in) of the weight delta a complete group makes (in = None for a bias-only delta),
    or None when its tensors do not fit together."""
    r = group.roles

    def s(role):
        shape = tuple(shapes[r[role]])
        return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else shape  # 1x1-conv spelling

    def product(full, a, b):
        if full in r:
            return s(full) if len(s(full)) == 2 else None
        sa, sb = s(a), s(b)
        return (sa[0], sb[1]) if len(sa) == 2 and len(sb) == 2 and sa[1] == sb[0] else None

    kind = group.kind
    if kind == "lora":
        out = product(None, "up", "down")
    elif kind == "lokr":
        w1, w2 = product("w1", "w1_a", "w1_b"), product("w2", "w2_a", "w2_b")
        out = (w1[0] * w2[0], w1[1] * w2[1]) if w1 and w2 else None
    elif kind == "loha":
        h1, h2 = product(None, "h1_a", "h1_b"), product(None, "h2_a", "h2_b")
        out = h1 if h1 and h1 == h2 else None
    elif kind == "full":
        out = s("diff") if "diff" in r else (s("diff_b")[0], None)
        out = out if len(out) == 2 else None
    else:
        return None
    if out and "diff_b" in r and kind != "full" and s("diff_b") != (out[0],):
        return None
    return out
