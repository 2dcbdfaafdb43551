"""Putting file tensors into a model built without memory: check names and shapes first, then assign.

The model is built on the meta device, so its parameters take no memory; `assign=True` makes the
memory-mapped file tensors the parameters themselves (no copy unless the dtype must change).
"""

from __future__ import annotations

import threading

import torch

from engine.errors import ModelFileError

_building = threading.local()  # this thread's build_empty depth
_hook_lock = threading.Lock()
_hook = None


def build_empty(factory):
    """Run `factory()` with parameters on the meta device (buffers stay real).

    Only this thread's new parameters go to the meta device: torch's parameter-registration hook checks a
    thread-local flag, so a model built at the same time in another thread (a second load, a LoRA shape
    probe) is untouched. accelerate's init_empty_weights patches nn.Module for the whole process instead,
    and two overlapping uses could leave it patched for good (every later model built empty)."""
    _install_hook()
    _building.depth = getattr(_building, "depth", 0) + 1
    try:
        return factory()
    finally:
        _building.depth -= 1


def _install_hook() -> None:
    global _hook
    with _hook_lock:
        if _hook is None:
            from torch.nn.modules.module import register_module_parameter_registration_hook

            _hook = register_module_parameter_registration_hook(_to_meta)


def _to_meta(module, name, param):
    """A parameter being registered in a thread inside build_empty, moved to the meta device (same class
    and attributes, so quantized or tied parameter types survive)."""
    if not getattr(_building, "depth", 0) or param is None or param.device.type == "meta":
        return None
    if type(param) is torch.nn.Parameter:
        meta = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        meta.__dict__.update(param.__dict__)
        return meta
    return type(param)(param.to("meta"), **{**param.__dict__, "requires_grad": param.requires_grad})


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
