"""Putting file tensors into a model built without memory: check names and shapes first, then assign.

The model is built on the meta device, so its parameters take no memory; `assign=True` makes the
memory-mapped file tensors the parameters themselves (no copy unless the dtype must change).
"""

from __future__ import annotations

import torch

from engine.errors import ModelFileError


def build_empty(factory):
    """Run `factory()` with parameters on the meta device (buffers stay real)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return factory()


def check_shapes(model, shapes: dict, path, what: str, tied=()) -> None:
    """One message naming missing, unexpected or wrongly shaped tensors, before anything is read."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in tied}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected) - set(tied))
    wrong = [f"{k} {tuple(shapes[k])} (expected {expected[k]})" for k in sorted(expected)
             if k in shapes and tuple(shapes[k]) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing ({_few(missing)}): the file is incomplete or not a "
                        f"{what}")
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) of the wrong shape ({_few(wrong)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) ({_few(unexpected)})")
    if problems:
        raise ModelFileError(path, f"does not fit a {what}: " + "; ".join(problems))


def assign_weights(model, tensors: dict, dtype: torch.dtype, tied=()) -> None:
    """Make `tensors` the model's parameters, casting floating-point ones to `dtype` where they differ."""
    cast = {k: (t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t) for k, t in tensors.items()}
    model.load_state_dict(cast, strict=False, assign=True)
    leftover = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta and n not in tied]
    if leftover:  # check_shapes should have caught this; never run a model with meta weights
        raise ModelFileError("model", f"weights not loaded: {_few(leftover)}")
    model.eval().requires_grad_(False)


def _few(names, n: int = 3) -> str:
    return ", ".join(names[:n]) + (f", ... (+{len(names) - n})" if len(names) > n else "")


def state_dict_for_file(model) -> dict:
    """Contiguous tensors, a tied output head left out (as the real encoder files do)."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    return sd
