"""The Z-Image-i2L hypernetwork as a plain module in its released names, and what it writes.

For each of the 34 blocks (layers 0-29, context_refiner 0-1, noise_refiner 0-1) and each target Linear, two
small bias-free MLPs read the picture vector x [E] (E = 1536 + 4096):
  lora_A = proj_a.proj_out(proj_a.proj_in(x)).view(rank, in)     (Linear E->C, then C->in*rank)
  lora_B = proj_b.proj_out(proj_b.proj_in(x)).view(out, rank)
with C = 128 and rank 4 in the release (DiffSynth's registry: compress_dim 128, rank 4, use_residual False).
A component's `blocks` list holds first one attention block per layer (to_q, to_k, to_v, to_out.0), then one
feed-forward block per layer (w1, w2, w3). N pictures: A's concatenated along the rank and scaled by 1/N,
B's concatenated along the rank: the average of the N deltas (DiffSynth's merge_lora).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import ModelFileError
from models.z_image.i2l.identify import COMPONENTS

RANK = 4
ATTENTION = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")
FEED_FORWARD = ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
TARGET_PREFIX = {"layers_lora": "layers", "context_refiner_lora": "context_refiner",
                 "noise_refiner_lora": "noise_refiner"}


@dataclass(frozen=True)
class HyperConfig:
    embedding: int  # E: the joined picture vector's width
    compress: int  # C
    dim: int  # the transformer's width (to_q in and out, w1 in, w2 out)
    ffn: int  # the feed-forward width (w1/w3 out, w2 in)
    blocks: tuple[tuple[str, int], ...]  # (component, transformer blocks it covers)
    rank: int = RANK


class CompressedMLP(nn.Module):
    def __init__(self, inp: int, mid: int, out: int):
        super().__init__()
        self.proj_in = nn.Linear(inp, mid, bias=False)
        self.proj_out = nn.Linear(mid, out, bias=False)

    def forward(self, x):
        return self.proj_out(self.proj_in(x))


class TargetHead(nn.Module):
    """x [N, E] -> lora_A [N, rank, in], lora_B [N, out, rank] for one Linear."""

    def __init__(self, cfg: HyperConfig, inp: int, out: int):
        super().__init__()
        self.proj_a = CompressedMLP(cfg.embedding, cfg.compress, inp * cfg.rank)
        self.proj_b = CompressedMLP(cfg.embedding, cfg.compress, out * cfg.rank)
        self.shape_a, self.shape_b = (cfg.rank, inp), (out, cfg.rank)

    def forward(self, x):
        return self.proj_a(x).view(-1, *self.shape_a), self.proj_b(x).view(-1, *self.shape_b)


class Block(nn.Module):
    def __init__(self, cfg: HyperConfig, targets: tuple[str, ...]):
        super().__init__()
        shapes = {"attention.to_q": (cfg.dim, cfg.dim), "attention.to_k": (cfg.dim, cfg.dim),
                  "attention.to_v": (cfg.dim, cfg.dim), "attention.to_out.0": (cfg.dim, cfg.dim),
                  "feed_forward.w1": (cfg.dim, cfg.ffn), "feed_forward.w2": (cfg.ffn, cfg.dim),
                  "feed_forward.w3": (cfg.dim, cfg.ffn)}
        self.targets = targets
        self.layers = nn.ModuleList(TargetHead(cfg, *shapes[t]) for t in targets)

    def forward(self, x) -> list:
        return [head(x) for head in self.layers]


class Component(nn.Module):
    def __init__(self, cfg: HyperConfig, count: int):
        super().__init__()
        self.count = count
        self.blocks = nn.ModuleList([Block(cfg, ATTENTION) for _ in range(count)]
                                    + [Block(cfg, FEED_FORWARD) for _ in range(count)])


class ZImageImageToLora(nn.Module):
    """The hypernetwork; forward(x [N, E]) -> {"layers.0.attention.to_q": (A [N, r, in], B [N, out, r]), ...}."""

    def __init__(self, cfg: HyperConfig):
        super().__init__()
        self.cfg = cfg
        for name, count in cfg.blocks:
            setattr(self, name, Component(cfg, count))

    def forward(self, x: torch.Tensor) -> dict:
        out = {}
        for name, _ in self.cfg.blocks:
            component = getattr(self, name)
            for j, block in enumerate(component.blocks):
                stem = f"{TARGET_PREFIX[name]}.{j % component.count}"
                for target, pair in zip(block.targets, block(x)):
                    out[f"{stem}.{target}"] = pair
        return out

    def block_list(self) -> list:
        return [b for name, _ in self.cfg.blocks for b in getattr(self, name).blocks]


def config_from_shapes(path, shapes: dict) -> HyperConfig:
    """The hypernetwork's sizes from a file's shapes; ModelFileError naming what does not fit the layout."""
    blocks = []
    for name in COMPONENTS:
        count = len({k.split(".")[2] for k in shapes if k.startswith(f"{name}.blocks.")})
        if count % 2:
            raise ModelFileError(path, f"{name} has {count} blocks: the layout has an attention and a "
                                       "feed-forward block per transformer block (an even count)")
        if count:
            blocks.append((name, count // 2))
    if not blocks:
        raise ModelFileError(path, "no hypernetwork blocks (layers_lora.blocks.N...)")
    first = f"{blocks[0][0]}.blocks.0.layers."
    try:
        compress, embedding = shapes[first + "0.proj_a.proj_in.weight"]
        q_rows = shapes[first + "0.proj_a.proj_out.weight"][0]
        count = blocks[0][1]
        ffn_rows = shapes[f"{blocks[0][0]}.blocks.{count}.layers.0.proj_b.proj_out.weight"][0]
    except KeyError as exc:
        raise ModelFileError(path, f"not the Z-Image-i2L layout: {exc.args[0]} is missing") from None
    if q_rows % RANK or ffn_rows % RANK:
        raise ModelFileError(path, f"LoRA widths {q_rows} / {ffn_rows} are not multiples of the rank {RANK}")
    return HyperConfig(embedding, compress, q_rows // RANK, ffn_rows // RANK, tuple(blocks))


def lora_tensors(per_module: dict, prefix: str = "transformer.") -> dict:
    """The hypernetwork's output for N pictures -> one LoRA: {prefix + module + ".lora_A.weight": [r*N, in],
    ".lora_B.weight": [out, r*N]}, A's concatenated along the rank and scaled by 1/N (DiffSynth's order: the
    concatenation first, then the scale), B's concatenated along the rank."""
    tensors = {}
    for module, (a, b) in per_module.items():
        n = a.shape[0]
        tensors[f"{prefix}{module}.lora_A.weight"] = torch.cat(list(a), dim=0) * (1 / n)
        tensors[f"{prefix}{module}.lora_B.weight"] = torch.cat(list(b), dim=1)
    return tensors
