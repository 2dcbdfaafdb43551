"""A training run's resumable state in one safetensors file: no pickle anywhere.

Tensors: `lora.<module>.down|up` (fp32), `optim.<param index>.<state key>` (the optimizer's per-parameter
state), `rng.cpu` / `rng.cuda.<i>` (torch's generator states), `history.loss` (the loss of every step so far).
Header metadata (JSON strings): the step, the run's settings, the dataset hash, the optimizer's name, param
groups and any non-tensor state values. Loading rebuilds the optimizer's state_dict from these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import ModelFileError
from engine.training.output import write_replacing

FORMAT = "zimage-studio-training-checkpoint"
VERSION = "1"


@dataclass
class Checkpoint:
    step: int
    settings: dict
    dataset_hash: str
    lora: dict[str, torch.Tensor]
    optimizer_name: str
    optimizer_state: dict
    history: list[float] = field(default_factory=list)
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # anything else worth keeping (file names, timings)


def save(path: Path, ckpt: Checkpoint) -> Path:
    tensors = {f"lora.{k}": v for k, v in ckpt.lora.items()}
    optim_tensors, optim_meta = flatten_optimizer(ckpt.optimizer_state)
    tensors.update(optim_tensors)
    tensors.update({f"rng.{k}": v for k, v in ckpt.rng.items()})
    tensors["history.loss"] = torch.tensor(ckpt.history, dtype=torch.float64)
    metadata = {"format": FORMAT, "version": VERSION, "step": str(ckpt.step),
                "settings": json.dumps(ckpt.settings), "dataset_hash": ckpt.dataset_hash,
                "optimizer": json.dumps({"name": ckpt.optimizer_name, **optim_meta}),
                "info": json.dumps(ckpt.info)}
    return write_replacing(tensors, path, metadata)


def load(path: Path) -> Checkpoint:
    """The checkpoint at `path`; ModelFileError when it is not one this app wrote or is damaged."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ModelFileError(path, "not a training checkpoint of this app")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        optim = json.loads(metadata["optimizer"])
        return Checkpoint(
            step=int(metadata["step"]), settings=json.loads(metadata["settings"]),
            dataset_hash=metadata.get("dataset_hash", ""),
            lora={k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")},
            optimizer_name=optim.pop("name"), optimizer_state=unflatten_optimizer(tensors, optim),
            history=tensors["history.loss"].tolist(),
            rng={k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")},
            info=json.loads(metadata.get("info", "{}")))
    except ModelFileError:
        raise
    except Exception as exc:  # truncated file, missing field: say so rather than fail somewhere later
        raise ModelFileError(path, f"damaged training checkpoint ({type(exc).__name__}: {exc})") from None


def flatten_optimizer(state_dict: dict) -> tuple[dict, dict]:
    """An optimizer state_dict as ({'optim.<i>.<key>': tensor}, JSON-able {param_groups, scalars})."""
    tensors, scalars = {}, {}
    for index, state in state_dict["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> dict[str, torch.Tensor]:
    """torch's global generator states (CPU, and each CUDA device)."""
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return out


def restore_rng(states: dict[str, torch.Tensor]) -> None:
    if "cpu" in states:
        torch.set_rng_state(states["cpu"])
    cuda = [states[k] for k in sorted(states) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
