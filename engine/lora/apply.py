"""Applying LoRAs without merging: a forward hook on each targeted Linear adds the active deltas.

Base weights are never written, so this works on any Linear (bf16, INT8 quanto QLinear, offloaded),
switching LoRAs only moves hooks, removing them gives the base output bit for bit, and each LoRA's
strength can change between passes. (PEFT injection was not used: it replaces modules, which offloading
and quantized layers do not survive, and it has no fused-qkv, LoKr and LoHa in one stack.)
"""

from __future__ import annotations

from collections import OrderedDict
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
        self._hooks, self.active, self.strengths = [], [], {}

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
                output = adapter.add(output, x if x.dtype == adapter.dtype else x.to(adapter.dtype), s)
            return output

        return add_deltas


def scheduled(model_fn, stack: LoraStack | None, items: list[dict], sigmas: torch.Tensor):
    """model_fn that first sets each LoRA's strength for the step `sigma` belongs to."""
    if not items:
        if stack is not None and stack.active:
            raise RuntimeError("LoRAs are attached but the settings name none")
        return model_fn
    if stack is None or {a.name for a in stack.active} != {it["name"] for it in items}:
        raise RuntimeError("the settings' LoRAs are not the attached ones (apply_loras first)")
    steps = len(sigmas) - 1

    def model_fn_with_loras(x, sigma, *rest):
        i = step_of(sigmas, sigma)
        stack.set_strengths({it["name"]: lora_strength_at(it, i, steps) for it in items})
        return model_fn(x, sigma, *rest)

    return model_fn_with_loras
