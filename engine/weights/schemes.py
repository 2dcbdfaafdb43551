"""How a file's weights are stored, and the one path that puts them into a model built on the meta device.

A loader plans names (diffusers name -> file tensor), then asks `scheme_for` what the planned tensors are:
plain floats, quanto INT8 (Wan2GP), ComfyUI fp8 (plain / scaled / mixed) or GGUF blocks. The scheme gives the
shapes the unquantized model has (for the shape check before anything is read), swaps the quantized layers
in, and hands back the plain tensors for `assign_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.weights import fp8 as F8
from engine.weights import quantization as Q


@dataclass
class Scheme:
    kind: str = "bf16"  # engine.weights.formats.KINDS
    int8: list[str] = field(default_factory=list)  # quanto INT8 modules
    fp8: F8.FP8Plan | None = None
    gguf: list[str] = field(default_factory=list)  # modules whose `.weight` is GGUF-quantized

    def logical_shapes(self, shapes: dict) -> dict:
        """The shapes of the unquantized model's tensors (scales and configs left out)."""
        if self.int8:
            return Q.logical_shapes(shapes, self.int8)
        if self.fp8 is not None:
            return {k: v for k, v in shapes.items() if k not in self.fp8.drop}
        return dict(shapes)

    def install(self, model, dtype, path) -> None:
        """Swap the quantized layers in while the model is still on the meta device."""
        if self.int8:
            Q.install_int8_linears(model, self.int8, dtype, path)
        elif self.fp8 is not None:
            F8.install(model, self.fp8, path)
        elif self.gguf:
            from engine.weights import gguf_layers

            self.gguf = [m for m in self.gguf if _layer_type(model, m) in ("Linear", "Embedding")]
            gguf_layers.install(model, self.gguf, dtype, path)

    def assign(self, model, tensors: dict, dtype, path) -> dict:
        """Quantized tensors into their layers; returns the plain ones (GGUF blocks of other modules, such as a
        norm, dequantized here: they are small)."""
        if self.int8:
            return Q.complete_tensors(tensors, self.int8, dtype)
        if self.fp8 is not None:
            return F8.assign(model, self.fp8, tensors, path)
        if self.gguf or self.kind == "gguf":
            from engine.weights import gguf_layers

            rest = gguf_layers.assign(model, tensors, self.gguf)
            return {k: (gguf_layers.dequantize(v, dtype).reshape(_shape(model, k, v)) if hasattr(v, "quant_type")
                        else v) for k, v in rest.items()}
        return tensors


def _layer_type(model, module: str) -> str:
    try:
        return type(model.get_submodule(module)).__name__
    except AttributeError:
        return ""


def _shape(model, key: str, value):
    try:
        return model.get_parameter(key).shape
    except AttributeError:
        return value.quant_shape


def scheme_for(path, info, plan: dict, read) -> Scheme:
    """The scheme of the planned tensors. `plan`: name -> (file tensor, rows); `read(names)` reads small planned
    tensors by planned name (fp8 layer configs)."""
    entries = {name: info.tensors[src] for name, (src, _) in plan.items()}
    if info.format == "gguf":
        from engine.weights.gguf_layers import is_quantized

        modules = sorted(n[: -len(".weight")] for n, (dtype, _) in entries.items()
                         if n.endswith(".weight") and is_quantized(dtype))
        return Scheme("gguf", gguf=modules)
    int8 = Q.check_quantized(path, entries, info.metadata)
    if int8:
        return Scheme("int8", int8=int8)
    if F8.is_fp8_file(entries, info.metadata):
        return Scheme("fp8", fp8=F8.plan(path, entries, info.metadata, read))
    return Scheme()
