"""Loading a Fun-ControlNet-Union control module (original, diffusers or Wan2GP file) beside a loaded transformer.

The module is diffusers' ZImageControlNetModel built on the meta device, checked, and given the file's
memory-mapped tensors; `from_transformer` then shares the transformer's embedders, refiners and pad tokens,
so nothing is held twice.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.errors import ModelFileError
from engine.weights.quantization import plain_name
from engine.weights.safetensors_io import load_tensors
from engine.weights.assign import assign_weights, build_empty, check_shapes
from models.z_image import control_keys as CK
from models.z_image import keys as K
from models.z_image.config import metadata_config
from engine.weights.safetensors_io import open_weights
from models.z_image.loader import _materialize, _scheme, folder_config


def inspect_control(path: Path, host_layers: int) -> tuple[CK.ControlSpec, dict]:
    """(spec, plan) of a control file, from its header plus, for 2.x, two small tensors (2.0 vs 2.1)."""
    info = open_weights(path)
    K.check_supported_format(info.name, info.tensors)
    prefix = CK.find_control(info.tensors)
    if prefix is None:
        held = K.components_in(info.tensors)
        reason = K.describe_foreign(info.tensors) or (
            f"it holds a Z-Image {' and a '.join(held)}, not a Fun-ControlNet control module" if held else
            "no Fun-ControlNet control tensors (control_all_x_embedder.*, control_layers.*) in it")
        raise ModelFileError(info.name, reason)
    shapes_in = {k: v[1] for k, v in info.tensors.items()}
    plan = CK.control_plan(shapes_in, prefix)
    base = folder_config(path) or metadata_config(info.metadata)
    by_plain = {plain_name(k): k for k in plan}  # an INT8 file's `<m>.weight._data` read as `<m>.weight`
    shapes = K.plan_shapes(plan, shapes_in)
    spec = CK.infer_spec(info.name, {p: shapes[k] for p, k in by_plain.items()}, host_layers, base)
    probes = [plan[by_plain[k]][0] for k in CK.refiner_probe_keys(spec) if k in by_plain]
    if spec.refiner_needs_data_check and (len(probes) < 2 or _any_all_zero(info, probes)):
        spec = spec.as_version(CK.REFINER_REPEAT)  # 2.0: its control refiner was never trained
    return spec, CK.wanted_names(plan, spec)


def _any_all_zero(info, names) -> bool:
    tensors = load_tensors(info, names)
    return any(not torch.count_nonzero(t) for t in tensors.values())


def load_control(path: Path, transformer, dtype: torch.dtype):
    """(ZImageControlNetModel sharing `transformer`'s modules, ControlSpec)."""
    from diffusers import ZImageControlNetModel

    info = open_weights(path)
    spec, plan = inspect_control(path, transformer.config.n_layers)
    _check_fit(info.name, spec, transformer)
    net = build_empty(lambda: ZImageControlNetModel(**spec.config()))
    scheme = _scheme(plan, info)  # INT8 (Wan2GP's *_quanto_bf16_int8 modules), fp8 and GGUF layers stay quantized
    check_shapes(net, scheme.logical_shapes(K.plan_shapes(plan, {k: v[1] for k, v in info.tensors.items()})),
                 info.name, f"Fun-ControlNet {spec.version} control module")
    scheme.install(net, dtype, info.name)
    assign_weights(net, scheme.assign(net, _materialize(plan, info), dtype, info.name), dtype)
    return ZImageControlNetModel.from_transformer(net, transformer), spec


def _check_fit(path, spec: CK.ControlSpec, transformer) -> None:
    cfg = transformer.config
    if spec.dim != cfg.dim or spec.heads != cfg.n_heads:
        raise ModelFileError(path, f"the control module is for a transformer of width {spec.dim} and {spec.heads} "
                                   f"heads; this one has {cfg.dim} and {cfg.n_heads}")
    if spec.refiner_places and max(spec.refiner_places) >= cfg.n_refiner_layers:
        raise ModelFileError(path, f"the control module needs {len(spec.refiner_places)} noise-refiner layers; "
                                   f"the transformer has {cfg.n_refiner_layers}")
    channels = 2 * cfg.in_channels + 1 if spec.inpaint else cfg.in_channels
    if spec.in_channels != channels:
        raise ModelFileError(path, f"the control module takes {spec.in_channels} input channels; with "
                                   f"{cfg.in_channels} latent channels it should take {channels}")
