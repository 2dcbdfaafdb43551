"""One module's LoRA delta, kept factored, and its contribution to the module's output.

An adapter maps the module input x [..., in] to strength * (delta_W @ x + delta_b) [..., out] without ever
forming W + delta_W, so it works on any Linear (bf16, fp8-cast or INT8 quantized) and switching is free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.lora.format import Group


class Adapter:
    """Common to all adapters: their tensors, device and dtype, and moving them (offloaded models)."""

    def tensors(self) -> list:
        return [v for v in vars(self).values() if isinstance(v, torch.Tensor)]

    def to(self, device=None, dtype=None) -> "Adapter":
        """In place: factors on `device` in `dtype`, contiguous (row slices of fused tensors are views)."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device=device, dtype=dtype or value.dtype).contiguous())
        first = self.tensors()[0]
        self.device, self.dtype = first.device, first.dtype
        return self

    def add(self, out, x, strength: float):
        """out (the layer's output for input x) plus this adapter's contribution."""
        return out + self(x, strength).to(out.dtype)


class LowRank(Adapter):
    """up [out, r] @ down [r, in] * scale (+ bias [out]): LoRA, and LoHa rewritten exactly as a low-rank sum."""

    def __init__(self, down, up, scale: float, bias=None):
        self.down, self.up, self.scale, self.bias = down, up, scale, bias

    def __call__(self, x, strength: float):
        h = F.linear(x, self.down) * (strength * self.scale)  # scale the narrow [..., r] tensor
        y = F.linear(h, self.up)
        return y if self.bias is None else y + self.bias * strength

    def add(self, out, x, strength: float):
        """out += s * scale * (x @ down^T) @ up^T in two kernels, in place: the layer's output is a fresh tensor,
        and a new one of its size costs as much as the LoRA itself (memory-bound at low rank)."""
        if type(out) is not torch.Tensor or out.dtype != self.dtype or not out.is_contiguous() or out.requires_grad:
            return super().add(out, x, strength)
        h = F.linear(x, self.down).reshape(-1, self.down.shape[0])
        out.view(-1, out.shape[-1]).addmm_(h, self.up.T, alpha=strength * self.scale)
        return out if self.bias is None else out.add_(self.bias, alpha=strength)

    def dense(self):
        return self.up @ self.down * self.scale



class Kron(Adapter):
    """kron(a [ao, ai], b [bo, bi]) * scale, applied as a @ X @ b^T on x viewed as [..., ai, bi] (LoKr)."""

    def __init__(self, a, b, scale: float, bias=None):
        self.a, self.b, self.scale, self.bias = a, b, scale, bias

    def __call__(self, x, strength: float):
        lead = x.shape[:-1]
        X = x.reshape(*lead, self.a.shape[1], self.b.shape[1])
        y = torch.matmul(self.a, X @ self.b.T).reshape(*lead, -1) * (strength * self.scale)
        return y if self.bias is None else y + self.bias * strength

    def dense(self):
        return torch.kron(self.a, self.b) * self.scale



class Dense(Adapter):
    """A full weight delta [out, in] and/or bias delta [out] (LyCORIS `diff` / `diff_b`)."""

    def __init__(self, delta, bias=None):
        self.delta, self.bias = delta, bias

    def __call__(self, x, strength: float):
        if self.delta is None:
            return (self.bias * strength).expand(*x.shape[:-1], -1)
        return F.linear(x, self.delta, None if self.bias is None else self.bias) * strength

    def dense(self):
        return self.delta



def _matrix(t):
    return t.reshape(t.shape[0], -1) if t.dim() == 4 else t  # [r, in, 1, 1] 1x1-conv spelling


def build(group: Group, tensors: dict, alpha: float | None, rows=None, dtype=None, device=None):
    """The adapter for one group; `rows` (start, stop) keeps only those output rows (a fused qkv split).

    tensors: key -> tensor for the group's keys. alpha: the file's alpha for this module (None: scale 1)."""
    def get(role):
        return _matrix(tensors[group.roles[role]].to(device=device, dtype=torch.float32))

    def rank_scale(rank):
        return 1.0 if alpha is None else alpha / rank

    def product(full, a, b):
        return (get(full), None) if full in group.roles else (get(a) @ get(b), get(b).shape[0])

    kind = group.kind
    bias = get("diff_b").reshape(-1) if "diff_b" in group.roles else None
    if kind == "lora":
        down, up = get("down"), get("up")
        if "up_bias" in group.roles:  # PEFT's lora_bias: B has a bias, scaled like the rest
            extra = get("up_bias").reshape(-1) * rank_scale(down.shape[0])
            bias = extra if bias is None else bias + extra
        adapter = LowRank(down, up, rank_scale(down.shape[0]), bias)
    elif kind == "lokr":
        (a, rank_a), (b, rank_b) = product("w1", "w1_a", "w1_b"), product("w2", "w2_a", "w2_b")
        rank = rank_b or rank_a  # the decomposed factor's rank sets the scale, as LyCORIS does
        adapter = Kron(a, b, rank_scale(rank) if rank else 1.0, bias)
    elif kind == "loha":
        adapter = _loha(get("h1_a"), get("h1_b"), get("h2_a"), get("h2_b"), rank_scale(get("h1_b").shape[0]), bias)
    elif kind == "full":
        adapter = Dense(get("diff") if "diff" in group.roles else None, bias)
    else:
        raise ValueError(f"{group.stem}: {group.problem()}")
    if rows is not None:
        adapter = _rows(adapter, *rows)
    return adapter.to(device, dtype)


def _loha(a1, b1, a2, b2, scale, bias):
    """(a1 @ b1) * (a2 @ b2) equals a low-rank product of rank r1*r2 (face-splitting); dense when that is wider."""
    r = a1.shape[1] * a2.shape[1]
    out, inp = a1.shape[0], b1.shape[1]
    if r * (out + inp) >= out * inp // 2:
        return Dense((a1 @ b1) * (a2 @ b2) * scale, bias)
    up = (a1[:, :, None] * a2[:, None, :]).reshape(out, r)
    down = (b1[:, None, :] * b2[None, :, :]).reshape(r, inp)
    return LowRank(down, up, scale, bias)


def _rows(adapter, start: int, stop: int):
    """Only output rows start:stop (one of q, k, v of a fused qkv delta): up splits by rows, down is shared."""
    bias = None if adapter.bias is None else adapter.bias[start:stop]
    if isinstance(adapter, LowRank):
        return LowRank(adapter.down, adapter.up[start:stop], adapter.scale, bias)
    if isinstance(adapter, Dense) and adapter.delta is None:
        return Dense(None, bias)
    return Dense(adapter.dense()[start:stop], bias)
