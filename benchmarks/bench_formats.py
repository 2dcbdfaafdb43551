"""Weight-format benchmark on a small random model (Z-Image's blocks, 768 wide, 6 layers + 1 + 1 refiners): bf16,
INT8 (the app's quanto files, Wan2GP's layout), fp8 (ComfyUI's scaled fp8), GGUF Q8_0 and Q4_0 (every 2-D weight
quantized, as leejet's stable-diffusion.cpp files are), each against the bf16 file of the same weights.

Prints a table and one JSON line. Ratios are the figures to compare:
  resident size of the transformer loaded for bf16 compute vs bf16 (targets: Q8_0 <= 0.55x, Q4_0 <= 0.32x),
  peak RSS growth while loading it vs its file size (target <= 1.15x),
  time per image on the CPU vs the bf16 file, and the PSNR of its image vs the bf16 image.
Run: python benchmarks/bench_formats.py [--steps 4] [--size 256] [--repeats 2] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.child import child_json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_core import SMALL, small_parts, timed  # noqa: E402

TYPE = "bench_int8"  # the bf16 + INT8 type `build` makes (benchmarks/bench_gpu.py's reduced CPU check)
# wide and shallow: per-tensor overheads (Python objects, headers) small next to the weights, as in the real model
# (21 MB per tensor on average); FFN 2048 wide, so GGUF blocks divide every row
SHAPE = dict(dim=768, n_layers=6, heads=6, cap_dim=128, refiner_layers=1)
FORMATS = ("bf16", "int8", "fp8", "gguf_q8_0", "gguf_q4_0")
TARGETS = {"gguf_q8_0": 0.55, "gguf_q4_0": 0.32, "int8": 0.55}


def _touch(model) -> None:
    """Read every byte of every weight once, as a first generation would, without temporary copies."""
    for t in [*model.parameters(), *model.buffers()]:
        parts = [t._data, t._scale] if hasattr(t, "_data") and hasattr(t, "_scale") else [t]
        for part in parts:
            part = part.as_tensor() if hasattr(part, "as_tensor") else part
            if part.numel():
                int(part.detach().reshape(-1).view(torch.uint8).max())


def rss_probe(path: str, warm_up: str) -> None:
    """Child process: load a transformer file for bf16 compute, touch every weight, print the peak RSS growth.

    A first load of a small file of the same format maps the code that load runs (library pages count in RSS
    too), so the figure is the weights' memory, as it is for a multi-GB file."""
    from engine.placement.memory import MemoryMonitor, current_rss
    from models.z_image import loader

    _touch(loader.load_transformer(Path(warm_up), {}, torch.bfloat16))
    monitor = MemoryMonitor(torch.device("cpu"))
    before = current_rss()
    with monitor.stage("load"):
        _touch(loader.load_transformer(Path(path), {}, torch.bfloat16))
    print(json.dumps({"growth": monitor.as_dict()["load"]["peak_ram_bytes"] - before}))


def build(folder: Path) -> Path:
    """bf16 files of bench_core's SMALL model, its model JSON in `folder`/finetunes, and INT8 copies made by the
    app (the reduced CPU check of benchmarks/bench_gpu.py)."""
    return _build(folder, small_parts(SMALL), TYPE)[0]


def _build(folder: Path, parts: dict, type_name: str) -> tuple[Path, dict]:
    from engine.engine import Engine
    from engine.finetunes import add_alternative
    from engine.registry import Registry
    from engine.weights.files import FileLocator
    from models import families
    from models.z_image import tiny

    files = tiny.write_parts(folder, parts, torch.bfloat16, suffix="_bf16")
    files.update(URLs=[files["URLs"]], text_encoder_URLs=[files["text_encoder_URLs"]])  # INT8 ones join these
    finetunes = folder / "finetunes"
    finetunes.mkdir(exist_ok=True)
    (finetunes / f"{type_name}.json").write_text(json.dumps({"model": {"architecture": "z_image", **files}}))
    engine = Engine(Registry(families(), (ROOT / "defaults", finetunes)), FileLocator(folder, offline=True))
    model_def = engine.registry.get(type_name)
    for done in engine.registry.handler(type_name).quantize(model_def, engine.locator, ["transformer", "text_encoder"],
                                                            folder):
        add_alternative(finetunes, model_def, done.field, done.path, engine.locator)
    return finetunes, files


def write_formats(folder: Path, transformer, tag: str = "") -> dict[str, Path]:
    """The transformer in every format but INT8 (made by the app's quantizer)."""
    from tests import layouts

    with torch.no_grad():  # the same bf16-rounded weights as the bf16 file
        for p in transformer.parameters():
            p.copy_(p.bfloat16().float())
    sd_model = transformer
    return {
        "fp8": layouts.write_comfyui_scaled_fp8(folder / f"transformer{tag}_fp8_scaled.safetensors", sd_model),
        "gguf_q8_0": layouts.write_comfyui_gguf(folder / f"transformer{tag}-Q8_0.gguf", sd_model, "Q8_0",
                                                prefix="model.diffusion_model.", keep=()),
        "gguf_q4_0": layouts.write_comfyui_gguf(folder / f"transformer{tag}-Q4_0.gguf", sd_model, "Q4_0",
                                                prefix="model.diffusion_model.", keep=()),
    }


def build_formats(folder: Path) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """One model type per format (the transformer differs; the bf16 text encoder and VAE are shared), and small
    warm-up files of each format for the RSS probe."""
    from models.z_image import tiny

    parts = {"transformer": tiny.make_transformer(**SHAPE),
             "text_encoder": tiny.make_text_encoder(hidden=SHAPE["cap_dim"], layers=4, heads=4, kv_heads=2),
             "vae": tiny.make_vae()}
    finetunes, files = _build(folder, parts, "bench_bf16")
    paths = {"bf16": folder / "transformer_bf16.safetensors",
             "int8": folder / "transformer_quanto_bf16_int8.safetensors",
             **write_formats(folder, parts["transformer"])}
    warm_model = tiny.make_transformer(seed=5)
    warm = {"bf16": folder / "warm_bf16.safetensors", "int8": folder / "warm_int8.safetensors",
            **write_formats(folder, warm_model, "_warm")}
    from safetensors.torch import save_file

    from engine.weights.assign import state_dict_for_file
    from tests import layouts

    save_file({k: v.bfloat16() for k, v in state_dict_for_file(warm_model).items()}, str(warm["bf16"]))
    layouts.write_wan2gp_int8(warm["int8"], warm_model)
    for kind, path in paths.items():
        model = {"architecture": "z_image", **files, "URLs": str(path),
                 "text_encoder_URLs": files["text_encoder_URLs"][0]}
        (finetunes / f"bench_{kind}.json").write_text(json.dumps({"model": model}))
    return finetunes, paths, warm


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def probe(path: Path, warm_up: Path) -> int:
    return child_json(__file__, "--rss-probe", str(path), str(warm_up))["growth"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="float32", help="compute dtype of the timed images (CPU: float32)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from engine.engine import Engine
    from engine.registry import Registry
    from engine.weights import quantization as Q
    from engine.weights.files import FileLocator
    from models import families
    from models.z_image import loader

    folder = Path(tempfile.mkdtemp(prefix="zimage-bench-formats-"))
    finetunes, paths, warm = build_formats(folder)
    resident = {k: Q.resident_bytes(loader.load_transformer(p, {}, torch.bfloat16)) for k, p in paths.items()}
    growth = {k: probe(p, warm[k]) for k, p in paths.items()}
    sizes = {k: p.stat().st_size for k, p in paths.items()}

    engines, settings, images, times = {}, {}, {}, {k: [] for k in FORMATS}
    for kind in FORMATS:
        engines[kind] = Engine(Registry(families(), (ROOT / "defaults", finetunes)),
                               FileLocator(folder, offline=True), args.dtype, "cpu")
        settings[kind] = engines[kind].settings_for(f"bench_{kind}", prompt="a lighthouse on a cliff at dusk", seed=1,
                                                    num_inference_steps=args.steps, width=args.size, height=args.size)
        images[kind] = engines[kind].generate(settings[kind])[0].image  # load + warm up
    for _ in range(args.repeats):  # interleaved, so load from other processes hits every format alike
        for kind in FORMATS:
            times[kind].append(timed(lambda: engines[kind].generate(settings[kind]), 1))
    seconds = {k: statistics.median(v) for k, v in times.items()}
    quality = {k: psnr(images["bf16"], images[k]) for k in FORMATS if k != "bf16"}

    print(f"\nFormats benchmark: dim {SHAPE['dim']}, {SHAPE['n_layers']} layers + {SHAPE['refiner_layers']}+"
          f"{SHAPE['refiner_layers']} refiners, {args.size}x{args.size}, {args.steps} steps, CPU {args.dtype}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}\n")
    head = f"{'format':<11}{'file MiB':>10}{'resident':>10}{'vs bf16':>9}{'target':>8}{'load peak':>11}" \
           f"{'vs file':>9}{'s/image':>9}{'vs bf16':>9}{'PSNR dB':>9}"
    print(head)
    for kind in FORMATS:
        target = f"<={TARGETS[kind]}" if kind in TARGETS else ""
        print(f"{kind:<11}{sizes[kind] / 2**20:>10.1f}{resident[kind] / 2**20:>10.1f}"
              f"{resident[kind] / resident['bf16']:>8.3f}x{target:>8}{growth[kind] / 2**20:>10.1f}M"
              f"{growth[kind] / sizes[kind]:>8.3f}x{seconds[kind]:>9.2f}{seconds[kind] / seconds['bf16']:>8.2f}x"
              f"{quality.get(kind, float('inf')):>9.1f}")
    print("(targets: resident vs bf16 as listed; load peak vs file <= 1.15x for every format)")
    print(json.dumps({
        "bench": "formats", "shape": SHAPE, "size": args.size, "steps": args.steps, "dtype": args.dtype,
        "resident_ratio": {k: round(resident[k] / resident["bf16"], 4) for k in FORMATS},
        "load_rss_growth_ratio": {k: round(growth[k] / sizes[k], 4) for k in FORMATS},
        "file_size_ratio": {k: round(sizes[k] / sizes["bf16"], 4) for k in FORMATS},
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "time_ratio": {k: round(seconds[k] / seconds["bf16"], 4) for k in FORMATS},
        "psnr_db": {k: round(v, 2) for k, v in quality.items()}}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rss-probe":
        rss_probe(sys.argv[2], sys.argv[3])
    else:
        main()
