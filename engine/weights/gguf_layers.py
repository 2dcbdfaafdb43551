"""Layers whose weights stay GGUF-quantized in memory and are dequantized on the fly, one layer at a time.

Built on diffusers' GGUF support: its GGUFParameter holds the raw blocks with their GGML type, its GGUFLinear is
the layer class and its per-type block dequantizers (City96's torch ports) do the arithmetic. The one change is
the precision of that arithmetic: diffusers multiplies in float16 whatever the compute dtype; here it runs in
float32 for float32 compute and in float16 otherwise, then casts to the compute dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import ModelFileError

if TYPE_CHECKING:
    import torch


def dequantize(param, dtype: "torch.dtype") -> "torch.Tensor":
    """A GGUFParameter [rows, bytes] -> float weights [rows, cols] in `dtype`."""
    import torch
    from diffusers.quantizers.gguf.utils import GGML_QUANT_SIZES, dequantize_functions

    qtype = param.quant_type
    block, type_size = GGML_QUANT_SIZES[qtype]
    raw = param.as_tensor() if hasattr(param, "as_tensor") else param
    raw = raw.view(torch.uint8)
    rows = raw.shape[:-1]
    work = torch.float32 if dtype == torch.float32 else torch.float16
    blocks = raw.reshape(-1, type_size)
    values = dequantize_functions[qtype](blocks, block, type_size, work)
    return values.reshape(*rows, raw.shape[-1] // type_size * block).to(dtype)


def _linear_class():
    import torch
    from diffusers.quantizers.gguf.utils import GGUFLinear as DiffusersGGUFLinear

    class GGUFLinear(DiffusersGGUFLinear):
        """diffusers' GGUFLinear; forward dequantizes this layer's weight for this call only."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            weight = dequantize(self.weight, x.dtype)
            bias = self.bias.to(x.dtype) if self.bias is not None else None
            return torch.nn.functional.linear(x, weight, bias)

    return GGUFLinear


def _embedding_class():
    import torch

    class GGUFEmbedding(torch.nn.Embedding):
        """An embedding table kept quantized: only the rows looked up are dequantized (a whole Qwen3 table is
        778 MB in bf16)."""

        compute_dtype: torch.dtype = torch.bfloat16

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            raw = self.weight.as_tensor()[ids.reshape(-1)]
            return dequantize(type(self.weight)(raw, quant_type=self.weight.quant_type), self.compute_dtype) \
                .reshape(*ids.shape, self.embedding_dim)

    return GGUFEmbedding


def is_quantized(dtype_name: str) -> bool:
    from engine.weights.gguf_io import FLOAT_TYPES

    return dtype_name not in FLOAT_TYPES


def install(model, modules: list[str], dtype: "torch.dtype", path) -> None:
    """Replace each named Linear / Embedding (on the meta device) by its GGUF twin of the same shape."""
    import torch

    linear_cls, embedding_cls = _linear_class(), _embedding_class()
    for name in modules:
        module = model.get_submodule(name)
        if type(module) is torch.nn.Linear:
            new = linear_cls(module.in_features, module.out_features, module.bias is not None, compute_dtype=dtype,
                             device="meta")
        elif type(module) is torch.nn.Embedding:
            new = embedding_cls(module.num_embeddings, module.embedding_dim, padding_idx=module.padding_idx,
                                device="meta")
            new.compute_dtype = dtype
        else:
            raise ModelFileError(path, f"{name} is GGUF-quantized in the file but is a {type(module).__name__} in "
                                       "the model: only Linear and Embedding layers can stay quantized")
        new.requires_grad_(False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)


def assign(model, tensors: dict, modules: list[str]) -> dict:
    """Set the quantized weights of the installed layers; returns the remaining (plain) tensors."""
    rest = dict(tensors)
    for name in modules:
        module = model.get_submodule(name)
        module.weight = rest.pop(f"{name}.weight")
        module.weight.requires_grad_(False)
    return rest


def tie_head(model, embed_name: str = "model.embed_tokens", head_name: str = "lm_head") -> None:
    """A tied output head over a quantized embedding: a GGUF Linear sharing the embedding's blocks."""
    embed = model.get_submodule(embed_name)
    head = model.get_submodule(head_name)
    new = _linear_class()(head.in_features, head.out_features, False, compute_dtype=embed.compute_dtype,
                          device="meta")
    new.weight = embed.weight
    parent, _, child = head_name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


