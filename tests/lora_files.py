"""Tiny LoRA files in every key style users have, written from random factors, with the weight deltas
they mean computed here by hand (test-only; the app's reading of them is what the tests check)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

# diffusers name -> original/ComfyUI name (the test's own inverse of models/z_image/keys.py)
ORIGINAL = [(".attention.to_out.0", ".attention.out"), ("all_x_embedder.2-1", "x_embedder"),
            ("all_final_layer.2-1.", "final_layer.")]
STYLES = ("peft", "peft_metadata", "aitoolkit", "diffsynth", "comfyui", "comfyui_model_prefix", "kohya", "kohya_fused",
          "dotted", "lokr", "loha", "full")


def original_name(name: str) -> str:
    for a, b in ORIGINAL:
        name = name.replace(a, b)
    return name


def _smallest_factor(n: int) -> int:
    return next((f for f in range(2, n) if n % f == 0), 1)


class LoraWriter:
    """Random factors for some Linear modules, written in one key style; `expected` holds the deltas."""

    def __init__(self, linears: dict, seed: int = 0, rank: int = 4, magnitude: float = 0.3, dtype=torch.float32):
        self.linears = linears
        self.dtype = dtype  # the file's dtype; factors are rounded to it, so `expected` is exact
        self.gen = torch.Generator().manual_seed(seed)
        self.rank = rank
        self.magnitude = magnitude
        self.tensors: dict[str, torch.Tensor] = {}
        self.metadata: dict[str, str] = {}
        self.expected: dict[str, torch.Tensor] = {}  # module -> weight delta [out, in] at strength 1
        self.expected_bias: dict[str, torch.Tensor] = {}

    def rand(self, *shape):
        t = torch.randn(shape, generator=self.gen) * self.magnitude / max(1, shape[-1]) ** 0.25
        return t.to(self.dtype).float()

    def lora(self, key_stem: str, module: str, down_name=".lora_down.weight", up_name=".lora_up.weight",
             alpha: float | None = None):
        out, inp = self.linears[module]
        down, up = self.rand(self.rank, inp), self.rand(out, self.rank)
        self.tensors[key_stem + down_name], self.tensors[key_stem + up_name] = down, up
        if alpha is not None:
            self.tensors[key_stem + ".alpha"] = torch.tensor(float(alpha))
        self.expected[module] = up @ down * ((alpha / self.rank) if alpha is not None else 1.0)

    def fused_qkv(self, key_stem: str, block: str, alpha: float, down_name=".lora_down.weight",
                  up_name=".lora_up.weight"):
        parts = [f"{block}.attention.to_{p}" for p in "qkv"]
        rows = [self.linears[p][0] for p in parts]
        inp = self.linears[parts[0]][1]
        down, up = self.rand(self.rank, inp), self.rand(sum(rows), self.rank)
        self.tensors[key_stem + down_name], self.tensors[key_stem + up_name] = down, up
        self.tensors[key_stem + ".alpha"] = torch.tensor(float(alpha))
        full = up @ down * (alpha / self.rank)
        for part, chunk in zip(parts, full.split(rows)):
            self.expected[part] = chunk

    def lokr(self, key_stem: str, module: str, alpha: float):
        out, inp = self.linears[module]
        fo, fi = _smallest_factor(out), _smallest_factor(inp)
        w1 = self.rand(fo, fi)
        w2_a, w2_b = self.rand(out // fo, self.rank), self.rand(self.rank, inp // fi)
        self.tensors.update({key_stem + ".lokr_w1": w1, key_stem + ".lokr_w2_a": w2_a,
                             key_stem + ".lokr_w2_b": w2_b, key_stem + ".alpha": torch.tensor(float(alpha))})
        self.expected[module] = torch.kron(w1, w2_a @ w2_b) * (alpha / self.rank)

    def loha(self, key_stem: str, module: str, alpha: float):
        out, inp = self.linears[module]
        f = [self.rand(out, self.rank), self.rand(self.rank, inp), self.rand(out, self.rank), self.rand(self.rank, inp)]
        for name, t in zip(("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), f):
            self.tensors[f"{key_stem}.{name}"] = t
        self.tensors[key_stem + ".alpha"] = torch.tensor(float(alpha))
        self.expected[module] = (f[0] @ f[1]) * (f[2] @ f[3]) * (alpha / self.rank)

    def full(self, key_stem: str, module: str):
        out, inp = self.linears[module]
        self.tensors[key_stem + ".diff"] = delta = self.rand(out, inp) * 0.2
        self.tensors[key_stem + ".diff_b"] = bias = self.rand(out) * 0.2
        self.expected[module], self.expected_bias[module] = delta, bias

    def save(self, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.to(self.dtype).contiguous() for k, v in self.tensors.items()}, str(path),
                  metadata=self.metadata or None)
        return path


def write_style(path, linears: dict, style: str, seed: int = 0, modules=None) -> LoraWriter:
    """A LoRA in `style` over `modules` (default: every Linear); returns the writer with `expected`."""
    w = LoraWriter(linears, seed)
    modules = list(linears) if modules is None else modules
    blocks = sorted({m.rsplit(".attention.", 1)[0] for m in modules if ".attention.to_q" in m})
    for m in modules:
        fused = ".attention.to_" in m and m.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v")
        if style == "peft":
            w.lora(f"transformer.{m}", m, ".lora_A.weight", ".lora_B.weight")
        elif style == "peft_metadata":
            w.lora(f"transformer.{m}", m, ".lora_A.weight", ".lora_B.weight")
        elif style == "diffsynth":  # no prefix, PEFT's adapter name left in
            w.lora(m, m, ".lora_A.default.weight", ".lora_B.default.weight")
        elif style == "aitoolkit":
            w.lora(f"diffusion_model.{m}", m, ".lora_A.weight", ".lora_B.weight")
        elif style == "comfyui":
            if not fused:
                w.lora(f"diffusion_model.{original_name(m)}", m, alpha=2.0)
        elif style == "comfyui_model_prefix":
            w.lora(f"model.diffusion_model.{original_name(m)}", m, ".lora_A.weight", ".lora_B.weight", alpha=8.0)
        elif style == "kohya":
            w.lora("lora_unet_" + m.replace(".", "_"), m, alpha=3.0)
        elif style == "kohya_fused":
            if not fused:
                w.lora("lora_unet_" + original_name(m).replace(".", "_"), m, alpha=3.0)
        elif style == "dotted":
            stem = m.replace(".to_q", ".to.q").replace(".to_k", ".to.k").replace(".to_v", ".to.v")
            w.lora(f"diffusion_model.{stem}", m, ".lora.down.weight", ".lora.up.weight", alpha=4.0)
        elif style == "lokr":
            w.lokr("lycoris_" + m.replace(".", "_"), m, alpha=2.0)
        elif style == "loha":
            w.loha("lycoris_" + m.replace(".", "_"), m, alpha=2.0)
        elif style == "full":
            w.full(f"diffusion_model.{m}", m)
        else:
            raise ValueError(style)
    if style == "peft_metadata":  # alpha 8 over rank 4: every delta doubles
        w.metadata = {"lora_adapter_metadata": json.dumps({"transformer.lora_alpha": 8, "transformer.r": w.rank})}
        w.expected = {k: v * 8 / w.rank for k, v in w.expected.items()}
    if style in ("comfyui", "kohya_fused"):
        for block in blocks:
            stem = f"diffusion_model.{block}.attention.qkv" if style == "comfyui" else \
                f"lora_unet_{block.replace('.', '_')}_attention_qkv"
            w.fused_qkv(stem, block, alpha=2.0)
    w.save(path)
    return w
