"""Pure functions over a Fun-ControlNet-Union file's tensor names and shapes: which version it is, and how
its names map to diffusers' ZImageControlNetModel.

The original (VideoX-Fun) files, diffusers' own saves and Wan2GP's files all use the diffusers names
(`control_layers.N.attention.to_q.weight`, ...); ComfyUI-style names (fused `attention.qkv`, `attention.out`,
`q_norm`) and a model prefix are accepted as well. Nothing here reads tensor data.

Versions, from the names alone (section 7 of the reference):
- 1.0: `control_noise_refiner.*` are plain blocks (no `after_proj`): they refine the control tokens only.
- 2.0: the refiner stage re-runs the control layers (its `control_noise_refiner.*` are untrained: missing,
  or zero, which only the data can tell; see `refiner_needs_data_check`).
- 2.1: `control_noise_refiner.*` are control blocks that add hints to the noise refiner ("lite": fewer layers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine.errors import ModelFileError
from models.z_image.keys import CONTROL_STEMS, count_blocks

CONTROL_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "controlnet.", "control_model.",
                    "")
PROBE = "control_all_x_embedder.2-1.weight"

_RENAMES = [
    (re.compile(r"\.attention\.out\."), ".attention.to_out.0."),
    (re.compile(r"\.attention\.q_norm\."), ".attention.norm_q."),
    (re.compile(r"\.attention\.k_norm\."), ".attention.norm_k."),
]
_FUSED_QKV = re.compile(r"\.attention\.(?:to_)?qkv\.weight$")

REFINER_PLAIN, REFINER_REPEAT, REFINER_OWN = None, "control_layers", "control_noise_refiner"  # diffusers' values


@dataclass(frozen=True)
class ControlSpec:
    """What a control module is; `config()` gives ZImageControlNetModel's arguments."""

    version: str  # "1.0", "2.0", "2.1"
    n_layers: int  # control layers (6, 15, or 3 for lite)
    in_channels: int  # 16 (1.0) or 33 (2.x: control latent, keep mask, masked-image latent)
    refiner: str | None  # REFINER_PLAIN / REFINER_REPEAT / REFINER_OWN
    places: tuple[int, ...]  # transformer layers the hints are added to
    refiner_places: tuple[int, ...] = ()  # noise-refiner layers the hints are added to (2.x)
    dim: int = 3840
    heads: int = 30
    n_refiner: int = 2
    refiner_needs_data_check: bool = field(default=False, compare=False)

    @property
    def name(self) -> str:
        lite = " lite" if self.version == "2.1" and self.n_layers < 15 else ""
        return f"Fun-ControlNet-Union {self.version}{lite} ({self.n_layers} control layers, {self.in_channels} ch)"

    @property
    def inpaint(self) -> bool:
        return self.in_channels > 16

    @property
    def blocks_per_pass(self) -> int:
        """Control blocks run in one transformer pass (refiner stage + main stage)."""
        refiner = {REFINER_PLAIN: self.n_refiner, REFINER_OWN: self.n_refiner, REFINER_REPEAT: self.n_layers}
        return refiner[self.refiner] + self.n_layers

    def config(self) -> dict:
        return dict(control_layers_places=list(self.places), control_refiner_layers_places=list(self.refiner_places),
                    control_in_dim=self.in_channels, add_control_noise_refiner=self.refiner, dim=self.dim,
                    n_refiner_layers=self.n_refiner, n_heads=self.heads, n_kv_heads=self.heads)

    def as_version(self, refiner: str | None) -> "ControlSpec":
        version = {REFINER_REPEAT: "2.0", REFINER_OWN: "2.1"}.get(refiner, self.version)
        return ControlSpec(version, self.n_layers, self.in_channels, refiner, self.places, self.refiner_places,
                           self.dim, self.heads, self.n_refiner)


def find_control(keys) -> str | None:
    """The prefix before the control tensors of a file, or None."""
    for prefix in CONTROL_PREFIXES:
        if prefix + PROBE in keys:
            return prefix
    return None


def control_plan(shapes: dict, prefix: str) -> dict:
    """diffusers name -> (source name, row range | None) for the control tensors of a file."""
    plan = {}
    for src, shape in shapes.items():
        name = src[len(prefix):] if src.startswith(prefix) else None
        if name is None or not name.startswith(CONTROL_STEMS):
            continue
        if _FUSED_QKV.search(name):
            base = _FUSED_QKV.sub(".attention.", name)
            third = shape[0] // 3
            for i, part in enumerate(("to_q", "to_k", "to_v")):
                plan[f"{base}{part}.weight"] = (src, (i * third, (i + 1) * third))
            continue
        for pattern, repl in _RENAMES:
            name = pattern.sub(repl, name)
        plan[name] = (src, None)
    return plan


def infer_spec(path, shapes: dict, host_layers: int, base: dict | None = None) -> ControlSpec:
    """The version and config from diffusers-named shapes; `host_layers` is the transformer's layer count.

    `base` (a diffusers folder's or a header's config) may give the places; otherwise layer i of n sits on
    host layer i * (host_layers // n), as the originals and ComfyUI place them.
    """
    base = base or {}
    try:
        dim, patch_in = shapes[PROBE]
        head_dim = shapes["control_layers.0.attention.norm_q.weight"][0]
    except KeyError as exc:
        raise ModelFileError(path, f"not a complete Fun-ControlNet control module: tensor {exc} is missing") from None
    n_layers = count_blocks(shapes, "control_layers")
    n_refiner = count_blocks(shapes, "control_noise_refiner")
    if "control_noise_refiner.0.after_proj.weight" in shapes:
        refiner = REFINER_OWN  # 2.x; whether 2.0 or 2.1 may still depend on the data
    elif n_refiner:
        refiner = REFINER_PLAIN  # 1.0
    else:
        refiner, n_refiner = REFINER_REPEAT, 2  # 2.0 saved by diffusers (its unused refiner dropped)
    places = base.get("control_layers_places") or [i * (host_layers // max(1, n_layers)) for i in range(n_layers)]
    if len(places) != n_layers or max(places, default=0) >= host_layers or host_layers < n_layers:
        raise ModelFileError(path, f"the control module has {n_layers} control layers, which do not fit a "
                                   f"transformer of {host_layers} layers")
    version = "1.0" if refiner is REFINER_PLAIN else ("2.0" if refiner == REFINER_REPEAT else "2.1")
    return ControlSpec(version, n_layers, patch_in // 4, refiner, tuple(places),
                       () if refiner is REFINER_PLAIN else tuple(range(n_refiner)), dim, dim // head_dim,
                       n_refiner, refiner_needs_data_check=refiner == REFINER_OWN)


def refiner_probe_keys(spec: ControlSpec) -> list[str]:
    """Tensors whose being all zero marks a 2.0 file (an untrained control refiner), as diffusers and ComfyUI test."""
    return ["control_noise_refiner.0.before_proj.weight", "control_noise_refiner.0.after_proj.weight"] \
        if spec.refiner_needs_data_check else []


def wanted_names(plan: dict, spec: ControlSpec) -> dict:
    """The plan without tensors the version does not use (2.0's untrained refiner blocks)."""
    if spec.refiner == REFINER_REPEAT:
        return {k: v for k, v in plan.items() if not k.startswith("control_noise_refiner.")}
    return plan

