"""Applying LoRAs without merging: a forward hook on each targeted Linear adds the active deltas.

Base weights are never written, so this works on any Linear (bf16, INT8 quanto QLinear, offloaded),
switching LoRAs only moves hooks, removing them gives the base output bit for bit, and each LoRA's
strength can change between passes. (PEFT injection was not used: it replaces modules, which offloading
and quantized layers do not survive, and it has no fused-qkv, LoKr and LoHa in one stack.)
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.sampling.windows import step_of
from engine.settings import lora_strength_at


@dataclass
class LoadedLora:
    """A LoRA file mapped onto one model: module name -> adapters (usually one)."""

    name: str
    path: Path
    adapters: dict[str, list] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ads in self.adapters.values() for a in ads
                   for t in a.tensors())


class LoraStack:
    """The LoRAs attached to one model, their current strengths, and a small cache of loaded files."""

    def __init__(self, root: torch.nn.Module, max_idle: int = 2):
        self.root = root
        self.modules = dict(root.named_modules())
        self.active: list[LoadedLora] = []
        self.strengths: dict[str, float] = {}
        self.max_idle = max_idle
        self._cache: OrderedDict = OrderedDict()
        self._hooks: list = []
        self.positive_only: set[str] = set()  # LoRAs acting on CFG's positive branch only
        self.cfg_rows: dict[int, int] | None = None  # during a batched CFG pass: see cfg_batch()

    def cached(self, key, load):
        """The LoadedLora for `key` (a file's identity), loading it once; idle ones are evicted first."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        lora = load()
        self._cache[key] = lora
        active = {id(a) for a in self.active}
        idle = [k for k, v in self._cache.items() if id(v) not in active and k != key]
        for k in idle[: max(0, len(idle) - self.max_idle)]:
            del self._cache[k]
        return lora

    def activate(self, loras: list[LoadedLora]) -> None:
        """Attach exactly these LoRAs (strength 1 until set_strengths)."""
        if [id(a) for a in loras] == [id(a) for a in self.active]:
            return
        self.clear()
        per_module: dict[str, list] = {}
        for lora in loras:
            for module, adapters in lora.adapters.items():
                per_module.setdefault(module, []).extend((a, lora.name) for a in adapters)
        for module, entries in per_module.items():
            self._hooks.append(self.modules[module].register_forward_hook(self._hook(entries)))
        self.active = list(loras)
        self.strengths = {lora.name: 1.0 for lora in loras}

    def set_strengths(self, strengths: dict[str, float]) -> None:
        missing = set(strengths) - set(self.strengths)
        if missing:
            raise RuntimeError(f"LoRA(s) not attached: {', '.join(sorted(missing))}")
        self.strengths.update(strengths)

    def clear(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks, self.active, self.strengths, self.positive_only = [], [], {}, set()

    def _hook(self, entries):
        stack = self

        def add_deltas(module, args, output):
            x = args[0]
            for adapter, name in entries:
                s = stack.strengths[name]
                if s == 0.0:
                    continue  # strength 0 is exactly no LoRA
                if adapter.device != x.device:  # the layer was moved (offloading): follow it once
                    adapter.to(x.device)
                xa = x if x.dtype == adapter.dtype else x.to(adapter.dtype)
                if stack.cfg_rows is not None and name in stack.positive_only:
                    output = _add_to_rows(adapter, output, xa, s, stack.cfg_rows.get(x.shape[0]))
                else:
                    output = adapter.add(output, xa, s)
            return output

        return add_deltas


def _add_to_rows(adapter, output, x, strength: float, rows: int | None):
    """The adapter's contribution on the first `rows` rows only (the positive branch): the other rows keep the
    layer's own output bit for bit. `rows` None (an input whose leading size does not tell the branches apart)
    leaves the whole output untouched, so the negative branch never sees the LoRA."""
    if not rows:
        return output
    head = output[:rows]
    added = adapter.add(head, x[:rows], strength)
    if added is head:  # added in place into the output's own rows
        return output
    return torch.cat([added, output[rows:]])


@contextmanager
def cfg_batch(stack: LoraStack | None, rows: dict[int, int]):
    """During one batched CFG pass (positive samples first, then negative ones): `rows` maps the leading size of
    a layer's input to how many of its rows belong to the positive branch ({2B: B} for [2B, L, dim] blocks;
    token counts for layers that see every sample's tokens concatenated). Positive-only LoRAs act on those."""
    if stack is None or not stack.positive_only:
        yield
        return
    stack.cfg_rows = rows
    try:
        yield
    finally:
        stack.cfg_rows = None


def scheduled(model_fn, stack: LoraStack | None, items: list[dict], sigmas: torch.Tensor):
    """model_fn that first sets each LoRA's strength for the step `sigma` belongs to."""
    if not items:
        if stack is not None and stack.active:
            raise RuntimeError("LoRAs are attached but the settings name none")
        return model_fn
    if stack is None or {a.name for a in stack.active} != {it["name"] for it in items}:
        raise RuntimeError("the settings' LoRAs are not the attached ones (apply_loras first)")
    steps = len(sigmas) - 1

    stack.positive_only = {it["name"] for it in items if it.get("positive_only")}

    def model_fn_with_loras(x, sigma, *rest):
        i = step_of(sigmas, sigma)
        stack.set_strengths({it["name"]: lora_strength_at(it, i, steps) for it in items})
        return model_fn(x, sigma, *rest)

    return model_fn_with_loras
