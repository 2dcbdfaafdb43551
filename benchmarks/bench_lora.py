"""LoRA benchmark on the small random model (the one bench_core.py builds): LoRA load time, switch time, and
time per denoising step with one and two unmerged LoRAs vs none (target <= 1.10x for one).

LoRAs cover every Linear of the transformer at rank --rank (default 16), as kohya files in bf16.
A step is one transformer pass through the pipeline's own model_fn; passes with none, one and two LoRAs alternate
and the fastest of each is compared (on a busy machine the median measures the neighbours too; it is in the JSON).
On CPU, one thread by default (see --threads); the figure that matters most is --device cuda.
Prints a table and one JSON line. Run: python benchmarks/bench_lora.py [--steps 8] [--size 512] [--repeats 10]
"""

from __future__ import annotations

import argparse
import dataclasses
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

import torch  # noqa: E402

from benchmarks.bench_core import SMALL, build, timed  # noqa: E402


def write_lora(path: Path, linears: dict, rank: int, seed: int) -> int:
    """A kohya-style LoRA over every Linear; returns the file size."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (out, inp) in linears.items():
        stem = "lora_unet_" + name.replace(".", "_")
        tensors[f"{stem}.lora_down.weight"] = (torch.randn(rank, inp, generator=gen) * 0.01).bfloat16()
        tensors[f"{stem}.lora_up.weight"] = (torch.randn(out, rank, generator=gen) * 0.01).bfloat16()
        tensors[f"{stem}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path.stat().st_size


def step_timer(engine, settings):
    """A function timing one denoising step (one model_fn pass, LoRA strengths set as generate sets them)."""
    from engine.lora.apply import scheduled
    from engine.sampling.schedules import shifted_simple
    from models.z_image.pipeline import initial_noise, make_model_fn

    model = engine.model
    cond = model.encoder.encode([settings.prompt])[0]
    sigmas = shifted_simple(settings.num_inference_steps, settings.flow_shift).to(model.device)
    x = initial_noise(settings, torch.Generator("cpu").manual_seed(settings.seed),
                      model.transformer.config.in_channels).to(model.device)

    def one_step():
        engine.apply_loras(settings)  # cached: only moves hooks
        model_fn = scheduled(make_model_fn(model, settings, lambda sigma: [cond] * x.shape[0], None), model.loras,
                             settings.loras, sigmas)
        sync(model.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            model_fn(x, sigmas[1])
        sync(model.device)
        return time.perf_counter() - t0

    return one_step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=10, help="timed passes per configuration")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to time a GPU (bfloat16 there)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: on a shared machine, multi-threaded small kernels wait on each "
                         "other's time slices and the ratios measure the scheduler, not the work)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from engine.engine import Engine
    from engine.weights.files import FileLocator
    from engine.registry import Registry
    from models import families
    from engine.settings import lora_item
    from models.z_image.lora import linear_shapes, read_lora

    folder = Path(tempfile.mkdtemp(prefix="zimage-bench-lora-"))
    build(folder)
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    engine = Engine(Registry(families(), extra_files=[folder / "bench_small.json"]), FileLocator(offline=True), dtype,
                    args.device, lora_dirs={"z_image": folder / "loras"})
    settings = engine.settings_for("bench_small", prompt="a lighthouse on a cliff at dusk", seed=1,
                                   num_inference_steps=args.steps, width=args.size, height=args.size)
    model = engine.load("bench_small")
    linears = linear_shapes(model.transformer)
    size = write_lora(folder / "loras" / "a.safetensors", linears, args.rank, 1)
    write_lora(folder / "loras" / "b.safetensors", linears, args.rank, 2)
    library = engine.lora_library("bench_small")
    one = dataclasses.replace(settings, loras=[lora_item("a.safetensors", 0.8)])
    two = dataclasses.replace(settings, loras=[lora_item("a.safetensors", 0.8), lora_item("b.safetensors", 0.5)])
    switch_b = dataclasses.replace(settings, loras=[lora_item("b.safetensors", 0.8)])

    load = timed(lambda: read_lora(library.resolve("a.safetensors"), linears, model.dtype, model.device),
                 args.repeats)
    engine.apply_loras(two)  # both cached from here on
    switches = []
    for _ in range(args.repeats * 4):
        for s in (one, switch_b):
            t0 = time.perf_counter()
            engine.apply_loras(s)
            switches.append(time.perf_counter() - t0)
    switch = statistics.median(switches)

    timers = {"none": step_timer(engine, settings), "one": step_timer(engine, one), "two": step_timer(engine, two)}
    per = {k: [] for k in timers}
    for r in range(args.repeats + 1):  # passes alternate between the three, the first round warms up
        for label in (list(timers) if r % 2 else list(timers)[::-1]):
            t = timers[label]()
            if r:
                per[label].append(t)
    step = {k: min(v) for k, v in per.items()}  # the least disturbed pass measures the work itself
    median = {k: statistics.median(v) for k, v in per.items()}

    rows = [
        ("LoRA load (read file + build adapters)", f"{load * 1000:.1f} ms", f"{size / 2**20:.1f} MiB file", ""),
        ("LoRA switch (cached, A <-> B)", f"{switch * 1000:.2f} ms", f"{switch / step['none']:.3f} steps", ""),
        ("time per step, no LoRA", f"{step['none']:.4f} s", "1.000x", ""),
        ("time per step, one LoRA (unmerged)", f"{step['one']:.4f} s", f"{step['one'] / step['none']:.3f}x",
         "<= 1.10x"),
        ("time per step, two LoRAs (unmerged)", f"{step['two']:.4f} s", f"{step['two'] / step['none']:.3f}x", ""),
    ]
    print(f"\nLoRA benchmark: dim {SMALL['dim']}, {SMALL['n_layers']} layers, {args.size}x{args.size}, "
          f"{args.steps} steps, rank {args.rank} on all {len(linears)} Linear layers, {args.device} {dtype}, "
          f"{torch.get_num_threads()} threads; step = one transformer pass, fastest of {args.repeats} interleaved\n")
    print(f"{'measure':<42}{'value':>14}{'ratio':>20}{'target':>10}")
    for row in rows:
        print(f"{row[0]:<42}{row[1]:>14}{row[2]:>20}{row[3]:>10}")
    print(json.dumps({"bench": "lora", "rank": args.rank, "layers": len(linears), "load_seconds": round(load, 5),
                      "switch_seconds": round(switch, 6), "step_seconds_none": round(step["none"], 5),
                      "step_ratio_one": round(step["one"] / step["none"], 4),
                      "step_ratio_two": round(step["two"] / step["none"], 4),
                      "median_step_ratio_one": round(median["one"] / median["none"], 4),
                      "median_step_ratio_two": round(median["two"] / median["none"], 4), "file_bytes": size}))


if __name__ == "__main__":
    main()
