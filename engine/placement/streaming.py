"""Block streaming: a model whose weights do not fit the GPU runs with them left in RAM; each repeated block is
copied to the GPU just before it runs and dropped just after, so VRAM holds the small parts outside the blocks,
one block and the activations, whatever the model's size. The arithmetic is the model's own (nothing is
quantized); the price is one transfer of the weights per forward pass, so a whole batch goes through at once.

The same mechanism as the memory profiles' block budgets, for models mmgp does not manage (one-off models such
as image-to-LoRA's encoders). `dtype` (optional) casts while copying: weights kept in one precision in RAM run
in another.
"""

from __future__ import annotations

import torch


class BlockStreamer:
    """Attach to `model`: its tensors outside `blocks` move to `device` for good, each block's only while it runs.
    `release()` (or leaving the `with` block) puts every tensor back where it was."""

    def __init__(self, model: torch.nn.Module, blocks: list, device, dtype: torch.dtype | None = None):
        self.model, self.blocks = model, list(blocks)
        self.device, self.dtype = torch.device(device), dtype
        self.copies = 0  # block copies made (for tests and benchmarks)
        self._homes: dict[int, tuple] = {}  # id(tensor holder) -> (holder, name, original tensor)
        self._hooks: list = []

    def _tensors(self, module, recurse=True):
        """(module that holds it, attribute name) for each parameter and buffer."""
        for owner in (module.modules() if recurse else [module]):
            for name in list(owner._parameters) + list(owner._buffers):
                if getattr(owner, name, None) is not None:
                    yield owner, name

    def _move(self, owner, name) -> None:
        tensor = getattr(owner, name)
        self._homes.setdefault((id(owner), name), (owner, name, tensor.data))
        dtype = self.dtype if tensor.is_floating_point() and self.dtype else None
        tensor.data = tensor.data.to(device=self.device, dtype=dtype, copy=True)

    def _restore(self, owner, name) -> None:
        home = self._homes.pop((id(owner), name), None)
        if home is not None:
            getattr(owner, name).data = home[2]

    def attach(self) -> "BlockStreamer":
        in_blocks = {(id(o), n) for b in self.blocks for o, n in self._tensors(b)}
        for owner, name in self._tensors(self.model):
            if (id(owner), name) not in in_blocks:
                self._move(owner, name)
        for block in self.blocks:
            self._hooks.append(block.register_forward_pre_hook(self._load))
            self._hooks.append(block.register_forward_hook(self._drop))
        return self

    def _load(self, block, args):
        for owner, name in self._tensors(block):
            self._move(owner, name)
        self.copies += 1

    def _drop(self, block, args, output):
        for owner, name in self._tensors(block):
            self._restore(owner, name)

    def release(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for owner, name, _ in list(self._homes.values()):
            self._restore(owner, name)

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.release()
