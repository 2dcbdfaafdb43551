"""LoRA training benchmark on a small random model with the real one's proportions (weights dominate memory,
head dim 128; bf16 files and the app's INT8 copies): time per step with captions cached vs encoded every step
against one forward+backward of the transformer alone, and peak memory with a bf16 and an INT8 frozen base,
with and without gradient checkpointing.

Targets: a step with cached captions no slower than the transformer's forward+backward alone (<= 1.05x: data,
noise and the optimizer add little); INT8 base peak memory <= 0.65x the bf16 base's.
Timing: one process, the three kinds taking turns, fastest of each (the median is in the JSON); on the CPU the
process's CPU time, which other processes on a shared machine barely move. Memory: one process per
configuration; on CUDA the peak allocated VRAM of the steps; on the CPU the bytes held between steps (frozen
weights, adapter, LoRA, optimizer state; counted tensor by tensor) plus the peak RSS growth during the steps
(activations and gradients).
Prints a table and one JSON line.
Run: python benchmarks/bench_train.py [--size 256] [--steps 3] [--rank 16] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.child import child_json  # noqa: E402

GIB, MIB = 2**30, 2**20


class _Ctx:
    """A job context for running the training outside the queue."""

    def check(self):
        pass

    def report(self, event):
        pass

    def note(self, message):
        pass

    def stage(self, name):
        pass


def make_dataset(folder: Path, count: int, size: int) -> Path:
    """`count` seeded pictures of size x size with captions."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        a = np.clip(rng.normal(128, 60, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a picture number {i} of a red fox in the snow, detailed fur",
                                            encoding="utf-8")
    return folder


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


SHAPE = dict(dim=768, n_layers=4, heads=6, cap_dim=128, refiner_layers=2)  # head dim 128, as the real model
TYPE = "bench_train"


def build(folder: Path) -> Path:
    """bf16 files of the benchmark model, a model JSON in `folder`/finetunes, and INT8 copies by the app."""
    import torch

    from benchmarks.bench_core import small_parts
    from engine.engine import Engine
    from engine.finetunes import add_alternative
    from engine.registry import Registry
    from engine.weights.files import FileLocator
    from models import families
    from models.z_image import tiny

    files = tiny.write_parts(folder, small_parts(SHAPE), torch.bfloat16, suffix="_bf16")
    files.update(URLs=[files["URLs"]])
    finetunes = folder / "finetunes"
    finetunes.mkdir()
    (finetunes / f"{TYPE}.json").write_text(json.dumps({"model": {"architecture": "z_image", **files}}))
    engine = Engine(Registry(families(), (ROOT / "defaults", finetunes)), FileLocator(folder, offline=True))
    model_def = engine.registry.get(TYPE)
    for done in engine.registry.handler(TYPE).quantize(model_def, engine.locator, ["transformer"], folder):
        add_alternative(finetunes, model_def, done.field, done.path, engine.locator)
    return finetunes


def start_run(config: dict, name: str):
    """A prepared training run (engine.training.run.Run) of `config` on a fresh seeded dataset."""
    from engine.engine import Engine
    from engine.load_options import LoadOptions
    from engine.registry import ROOT as APP_ROOT
    from engine.registry import Registry
    from engine.training.run import prepare
    from engine.training.settings import TrainSettings
    from engine.weights.files import FileLocator
    from models import families

    folder = Path(tempfile.mkdtemp(prefix="zimage-bench-train-"))
    registry = Registry(families(), (APP_ROOT / "defaults", Path(config["finetunes"])),
                        extra_files=[Path(p) for p in config.get("model_defs", [])])
    comfy = Path(config["comfyui"]) if config.get("comfyui") else None
    options = LoadOptions(transformer_quantization=config["quantization"],
                          text_encoder_quantization=config.get("text_encoder_quantization", "auto"))
    engine = Engine(registry, FileLocator(Path(config["checkpoints"]), comfy), config.get("dtype"),
                    config.get("device"), options)
    engine.lora_dirs["z_image"] = folder / "loras"
    data = make_dataset(folder / "data", config.get("images", 4), config["size"])
    settings = TrainSettings(
        name=name, images=str(data), model_type=config["model"], steps=10**6, rank=config["rank"],
        resolutions=(config["size"],), save_every=0, sample_every=0, adapter=config.get("adapter", "none"),
        output_dir=str(folder / "training"), cache_text=config.get("cache_text", True),
        gradient_checkpointing=config.get("checkpointing", True), optimizer="auto")
    return prepare(engine, settings, _Ctx())


def clock(device):
    """CPU: this process's CPU time (other processes on a shared machine barely move it); CUDA: wall time."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def timing_child(config: dict) -> dict:
    """Cached-caption steps, steps that encode their captions, and the transformer's forward+backward alone,
    taking turns (the text encoder stays loaded for the uncached kind)."""
    import torch

    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    run = start_run({**config, "cache_text": False}, "timing")
    loop = run.loop
    cached = {k: v.cpu() for k, v in run.backend.encode_prompts([s.caption for s in loop.batches.samples]).items()}
    device = run.backend.device
    now = clock(device)
    times = {"cached": [], "uncached": [], "fwd_bwd": []}

    def step(captions):
        loop.captions = captions
        sync(device)
        t0 = now()
        loop.train_step()
        sync(device)
        return now() - t0

    for i in range(config["warmup"] + config["steps"]):
        sample = (step(cached), step({}), forward_backward(loop, cached, now))
        if i >= config["warmup"]:
            for key, value in zip(times, sample):
                times[key].append(value)
    return {"fastest": {k: min(v) for k, v in times.items()},
            "median": {k: statistics.median(v) for k, v in times.items()}, "optimizer": loop.optimizer_name,
            "clock": "wall" if device.type == "cuda" else "process CPU time"}


def state_bytes(run) -> dict:
    """Bytes held between steps: frozen weights (INT8 layers count data and scales), the adapter, the LoRA
    and its optimizer state."""
    import torch

    from engine.weights.quantization import resident_bytes

    adapter = run.backend.adapter
    optim = sum(t.numel() * t.element_size() for st in run.loop.optimizer.state.values() for t in st.values()
                if isinstance(t, torch.Tensor))
    return {"weights": resident_bytes(run.backend.transformer),
            "adapter": sum(a.nbytes for a in adapter.active) if adapter is not None else 0,
            "lora": sum(p.numel() * p.element_size() for p in run.loop.lora.parameters()), "optimizer": optim}


def memory_child(config: dict) -> dict:
    """Peak memory of training steps. CUDA: PyTorch's peak allocated VRAM over the steps. CPU: the bytes held
    between steps (counted tensor by tensor) plus the peak RSS growth during the steps (activations and
    gradients; the child runs with small allocations returned to the system, so RSS follows what is live)."""
    import gc

    import torch

    from engine.placement.memory import _kernel_peak, _reset_kernel_peak, current_rss

    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    run = start_run(config, "measured")
    loop = run.loop
    device = run.backend.device
    loop.train_step()  # the optimizer state exists from here; first-call costs are paid
    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    held = state_bytes(run)
    before = current_rss()
    _reset_kernel_peak()
    now, times = clock(device), []
    for _ in range(config["steps"]):
        sync(device)
        t0 = now()
        loop.train_step()
        sync(device)
        times.append(now() - t0)
    steps_growth = max(_kernel_peak() or 0, current_rss()) - before
    peak = torch.cuda.max_memory_allocated(device) if cuda else sum(held.values()) + steps_growth
    return {"peak_bytes": peak, "held_bytes": held, "step_growth_bytes": 0 if cuda else steps_growth,
            "seconds_per_step": statistics.median(times),
            "transformer_file": Path(str(run.backend.transformer_path)).name}


def forward_backward(loop, captions, now) -> float:
    """One transformer forward+backward on the run's first sample (LoRA grads only), timed."""
    import torch

    sample = loop.batches.samples[0]
    device = loop.backend.device
    x0 = sample.latent[None].to(device)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(device)
    sigma = torch.tensor([0.5], device=device)
    caption = [captions[sample.caption].to(device)]
    sync(device)
    t0 = now()
    pred = loop.backend.predict((1 - sigma) * x0 + sigma * noise, sigma, caption)
    ((pred - (noise - x0)) ** 2).mean().backward()
    sync(device)
    seconds = now() - t0
    loop.optimizer.zero_grad(set_to_none=True)
    return seconds


def run_child(kind: str, config: dict) -> dict:
    # glibc: return freed blocks over 128 KB to the system at once, so RSS follows the live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    return child_json(__file__, "--child", kind, json.dumps(config), env=env, check=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to measure a GPU")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: CPU time then measures "
                                                           "work, not threads waiting for each other)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="zimage-bench-train-model-"))
    base = dict(model=TYPE, finetunes=str(build(folder)), checkpoints=str(folder), size=args.size,
                steps=args.steps, warmup=args.warmup, rank=args.rank, device=args.device, dtype="bfloat16",
                threads=args.threads, quantization="bf16")
    results = {"timing": run_child("timing", base)}
    for name, config in {"bf16": base, "int8": dict(base, quantization="int8"),
                         "bf16_no_checkpointing": dict(base, checkpointing=False)}.items():
        results[name] = run_child("memory", config)
    for name, result in results.items():
        print(f"done: {name}: {result.get('error', 'ok')}", file=sys.stderr)
    errors = {k: v["error"] for k, v in results.items() if "error" in v}
    if errors:
        print(json.dumps({"bench": "train", "errors": errors}))
        sys.exit(1)
    report(args, results)


def report(args, results: dict) -> None:
    cuda = args.device.startswith("cuda")
    fast = results["timing"]["fastest"]
    mem = {k: results[k]["peak_bytes"] for k in ("bf16", "int8", "bf16_no_checkpointing")}
    what = "peak VRAM" if cuda else "peak memory"
    rows = [
        ("step, captions cached", f"{fast['cached']:.3f} s", f"{fast['cached'] / fast['fwd_bwd']:.3f}x fwd+bwd",
         "<= 1.05x"),
        ("step, captions encoded every step", f"{fast['uncached']:.3f} s",
         f"{fast['uncached'] / fast['fwd_bwd']:.3f}x fwd+bwd", ""),
        ("transformer forward+backward alone", f"{fast['fwd_bwd']:.3f} s", "1.000x", ""),
        (f"{what}, bf16 base", f"{mem['bf16'] / MIB:.1f} MiB", "1.000x", ""),
        (f"{what}, INT8 base", f"{mem['int8'] / MIB:.1f} MiB", f"{mem['int8'] / mem['bf16']:.3f}x bf16", "<= 0.65x"),
        (f"{what}, bf16 base, no checkpointing", f"{mem['bf16_no_checkpointing'] / MIB:.1f} MiB",
         f"{mem['bf16_no_checkpointing'] / mem['bf16']:.3f}x bf16", ""),
    ]
    print(f"\nTraining benchmark: dim {SHAPE['dim']}, {SHAPE['n_layers']} layers (+{SHAPE['refiner_layers']}+"
          f"{SHAPE['refiner_layers']} refiners), {args.size}x{args.size}, rank {args.rank}, batch 1, {args.device} "
          f"bf16, optimizer {results['timing']['optimizer']}; time: {results['timing']['clock']}, fastest of "
          f"{args.steps} turns\n")
    print(f"{'measure':<46}{'value':>14}{'ratio':>18}{'target':>10}")
    for label, value, ratio, target in rows:
        print(f"{label:<46}{value:>14}{ratio:>18}{target:>10}")
    print(json.dumps({"bench": "train", "device": args.device, "size": args.size, "rank": args.rank,
                      "seconds": results["timing"], "step_vs_forward_backward": round(fast["cached"] / fast["fwd_bwd"], 4),
                      "peak_memory_bytes": mem, "int8_memory_ratio": round(mem["int8"] / mem["bf16"], 4),
                      "no_checkpointing_memory_ratio": round(mem["bf16_no_checkpointing"] / mem["bf16"], 4),
                      "held_bytes": {k: results[k]["held_bytes"] for k in mem},
                      "step_growth_bytes": {k: results[k]["step_growth_bytes"] for k in mem},
                      "seconds_per_step_memory_runs": {k: round(results[k]["seconds_per_step"], 4) for k in mem}}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child = {"timing": timing_child, "memory": memory_child}[sys.argv[2]]
        print(json.dumps(child(json.loads(sys.argv[3]))))
    else:
        main()
