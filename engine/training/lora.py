"""The LoRA being trained: fp32 factors, applied to frozen Linear layers by forward hooks (never merged).

For each target Linear W (any dtype, INT8 quanto layers too): y = W x + strength * scale * B (A x), computed in
the layer input's dtype (bf16 on GPUs: mixed precision) with the factors kept in fp32; A [r, in]
initialised as PEFT does (uniform in +-1/sqrt(in), seeded) and B [out, r] zero, so training starts from the
base model exactly. Removing the hooks gives the base model back bit for bit; the base weights are never
written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class TrainableLora(torch.nn.Module):
    """down/up factors per target module, kept in fp32; `attach` hooks them onto a model."""

    def __init__(self, targets: dict[str, tuple[int, int]], rank: int, alpha: float | None, seed: int):
        """targets: module name -> (out_features, in_features)."""
        super().__init__()
        self.names = sorted(targets)
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scale = self.alpha / rank
        self.strength = 1.0
        gen = torch.Generator().manual_seed(seed)
        self.down = torch.nn.ParameterList()
        self.up = torch.nn.ParameterList()
        for name in self.names:
            out, inp = targets[name]
            bound = 1 / inp ** 0.5  # kaiming_uniform(a=sqrt(5)), PEFT's init of lora_A
            self.down.append(torch.nn.Parameter((torch.rand(rank, inp, generator=gen) * 2 - 1) * bound))
            self.up.append(torch.nn.Parameter(torch.zeros(out, rank)))
        self._hooks: list = []

    def factors(self):
        """(module name, down [r, in], up [out, r]) for each target."""
        return zip(self.names, self.down, self.up)

    def attach(self, root: torch.nn.Module) -> None:
        self.detach()
        for name, down, up in self.factors():
            self._hooks.append(root.get_submodule(name).register_forward_hook(self._hook(down, up)))

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _hook(self, down, up):
        lora = self

        def add_delta(module, args, output):
            if lora.strength == 0:
                return output  # strength 0 is exactly the base layer
            x = args[0]
            # mixed precision: the fp32 factors are cast to the input's dtype (bf16 on GPUs), so backward keeps
            # the layer's own input, not an fp32 copy of it; gradients reach the fp32 factors through the casts
            h = F.linear(x, down.to(x.dtype))
            return output + (F.linear(h, up.to(x.dtype)) * (lora.scale * lora.strength)).to(output.dtype)

        return add_delta

    def tensors(self) -> dict[str, torch.Tensor]:
        """{module.down / module.up: fp32 tensor on the CPU}: the checkpoint's copy."""
        out = {}
        for name, down, up in self.factors():
            out[f"{name}.down"] = down.detach().float().cpu().contiguous()
            out[f"{name}.up"] = up.detach().float().cpu().contiguous()
        return out

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore factors written by `tensors()` (same targets and rank, else ValueError)."""
        for name, down, up in self.factors():
            for key, param in ((f"{name}.down", down), (f"{name}.up", up)):
                if key not in tensors or tuple(tensors[key].shape) != tuple(param.shape):
                    raise ValueError(f"{key} is missing or has another shape in the checkpoint")
                param.copy_(tensors[key])
