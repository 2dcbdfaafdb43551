"""INT8 benchmark on a small random model: the app's INT8 (quanto) files against its bf16 files, same weights.

Prints a table and one JSON line. Ratios are the figures to compare:
  resident size of the INT8 transformer vs the bf16 one, both loaded for bf16 compute (target <= 0.55x),
  peak RSS growth while loading the INT8 transformer vs its file size (target <= 1.15x),
  time per image on the CPU, INT8 vs bf16 files (bf16 and float32 compute), and the PSNR of the INT8 image.
Run: python benchmarks/bench_int8.py [--steps 8] [--size 512] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_core import SMALL, small_parts, timed  # noqa: E402

TYPE = "bench_int8"


def rss_probe(path: str, warm_up: str) -> None:
    """Child process: load a transformer file for bf16 compute, touch every weight, print peak RSS growth.

    Imports and a first load of another file of the same kind (the text encoder) map the code the load runs
    (library pages count in RSS too), so the figure is the weights' memory, as it is for a multi-GB file."""
    from diffusers import ZImageTransformer2DModel  # noqa: F401
    from diffusers.models.transformers.transformer_z_image import TimestepEmbedder  # noqa: F401

    from engine.placement.memory import MemoryMonitor, current_rss
    from models.z_image import loader

    loader.load_text_encoder(Path(warm_up), torch.bfloat16)
    monitor = MemoryMonitor(torch.device("cpu"))
    before = current_rss()
    with monitor.stage("load"):
        model = loader.load_transformer(Path(path), {}, torch.bfloat16)
        for t in [*model.parameters(), *model.buffers()]:  # read every byte, as a first generation would
            for part in ([t._data, t._scale] if hasattr(t, "_data") else [t.data]):
                if part.numel():
                    int(part.reshape(-1).view(torch.uint8).max())  # no temporary copies
    print(json.dumps({"growth": monitor.as_dict()["load"]["peak_ram_bytes"] - before}))


def build(folder: Path) -> Path:
    """bf16 files of the small model, its model JSON in `folder`/finetunes, and INT8 copies made by the app."""
    from engine.engine import Engine
    from engine.weights.files import FileLocator
    from engine.finetunes import add_alternative
    from engine.registry import Registry
    from models import families
    from models.z_image import tiny

    files = tiny.write_parts(folder, small_parts(SMALL), torch.bfloat16, suffix="_bf16")
    files.update(URLs=[files["URLs"]], text_encoder_URLs=[files["text_encoder_URLs"]])  # INT8 ones join these
    finetunes = folder / "finetunes"
    finetunes.mkdir()
    (finetunes / f"{TYPE}.json").write_text(json.dumps({"model": {"architecture": "z_image", **files}}))
    engine = Engine(Registry(families(), (ROOT / "defaults", finetunes)), FileLocator(folder, offline=True))
    model_def = engine.registry.get(TYPE)
    for done in engine.registry.handler(TYPE).quantize(model_def, engine.locator, ["transformer", "text_encoder"],
                                                       folder):
        add_alternative(finetunes, model_def, done.field, done.path, engine.locator)
    return finetunes



def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def probe(path: Path, warm_up: Path) -> int:
    out = subprocess.run([sys.executable, __file__, "--rss-probe", str(path), str(warm_up)], capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])["growth"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from engine.weights import quantization as Q
    from engine.engine import Engine
    from engine.weights.files import FileLocator
    from engine.load_options import LoadOptions
    from engine.registry import Registry
    from models import families
    from models.z_image import loader

    folder = Path(tempfile.mkdtemp(prefix="zimage-bench-int8-"))
    finetunes = build(folder)
    bf16_file, int8_file = folder / "transformer_bf16.safetensors", folder / "transformer_quanto_bf16_int8.safetensors"

    resident = {kind: Q.resident_bytes(loader.load_transformer(path, {}, torch.bfloat16))
                for kind, path in (("bf16", bf16_file), ("int8", int8_file))}
    growth = {"bf16": probe(bf16_file, folder / "text_encoder_bf16.safetensors"),
              "int8": probe(int8_file, folder / "text_encoder_quanto_bf16_int8.safetensors")}
    sizes = {"bf16": bf16_file.stat().st_size, "int8": int8_file.stat().st_size}

    seconds, images = {}, {}
    for dtype in ("bfloat16", "float32"):
        engines, settings = {}, {}
        for kind in ("bf16", "int8"):
            options = LoadOptions(transformer_quantization=kind, text_encoder_quantization=kind)
            engines[kind] = Engine(Registry(families(), (ROOT / "defaults", finetunes)), FileLocator(folder, offline=True), dtype,
                                   "cpu", options)
            settings[kind] = engines[kind].settings_for(TYPE, prompt="a lighthouse on a cliff at dusk", seed=1,
                                                        num_inference_steps=args.steps, width=args.size,
                                                        height=args.size)
            images[dtype, kind] = engines[kind].generate(settings[kind])[0].image  # load + warm up
        times = {"bf16": [], "int8": []}
        for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
            for kind in ("bf16", "int8"):
                times[kind].append(timed(lambda: engines[kind].generate(settings[kind]), 1))
        for kind in ("bf16", "int8"):
            seconds[dtype, kind] = statistics.median(times[kind])
            engines[kind].unload()

    quality = {dtype: psnr(images[dtype, "bf16"], images[dtype, "int8"]) for dtype in ("bfloat16", "float32")}
    r = lambda a, b: a / b  # noqa: E731
    rows = [
        ("resident size, INT8 transformer", f"{resident['int8'] / 2**20:.1f} MiB",
         f"{r(resident['int8'], resident['bf16']):.3f}x bf16", "<= 0.55x"),
        ("resident size, bf16 transformer", f"{resident['bf16'] / 2**20:.1f} MiB", "", ""),
        ("peak RSS growth loading INT8 transformer", f"{growth['int8'] / 2**20:.1f} MiB",
         f"{r(growth['int8'], sizes['int8']):.3f}x file", "<= 1.15x"),
        ("peak RSS growth loading bf16 transformer", f"{growth['bf16'] / 2**20:.1f} MiB",
         f"{r(growth['bf16'], sizes['bf16']):.3f}x file", ""),
        ("INT8 / bf16 transformer file size", f"{sizes['int8'] / 2**20:.1f} MiB",
         f"{r(sizes['int8'], sizes['bf16']):.3f}x", ""),
    ]
    for dtype in ("bfloat16", "float32"):
        rows += [(f"time per image, INT8 files, {dtype} compute", f"{seconds[dtype, 'int8']:.3f} s",
                  f"{r(seconds[dtype, 'int8'], seconds[dtype, 'bf16']):.3f}x bf16", ""),
                 (f"time per image, bf16 files, {dtype} compute", f"{seconds[dtype, 'bf16']:.3f} s", "", ""),
                 (f"PSNR INT8 vs bf16 image, {dtype} compute", f"{quality[dtype]:.1f} dB", "", "")]
    print(f"\nINT8 benchmark: dim {SMALL['dim']}, {SMALL['n_layers']} layers + {SMALL['refiner_layers']}+"
          f"{SMALL['refiner_layers']} refiners, {args.size}x{args.size}, {args.steps} steps, CPU, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}\n")
    print(f"{'measure':<46}{'value':>14}{'ratio':>18}{'target':>10}")
    for row in rows:
        print(f"{row[0]:<46}{row[1]:>14}{row[2]:>18}{row[3]:>10}")
    print(json.dumps({
        "bench": "int8", "resident_ratio": round(resident["int8"] / resident["bf16"], 4),
        "load_rss_growth_ratio_int8": round(growth["int8"] / sizes["int8"], 4),
        "load_rss_growth_ratio_bf16": round(growth["bf16"] / sizes["bf16"], 4),
        "file_size_ratio": round(sizes["int8"] / sizes["bf16"], 4),
        "time_ratio_bf16_compute": round(seconds["bfloat16", "int8"] / seconds["bfloat16", "bf16"], 4),
        "time_ratio_fp32_compute": round(seconds["float32", "int8"] / seconds["float32", "bf16"], 4),
        "seconds": {f"{d}/{k}": round(v, 4) for (d, k), v in seconds.items()},
        "psnr_db": {d: round(v, 2) for d, v in quality.items()}}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rss-probe":
        rss_probe(sys.argv[2], sys.argv[3])
    else:
        main()
