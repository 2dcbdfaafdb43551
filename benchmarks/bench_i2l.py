"""Image-to-LoRA memory benchmark on small random models with the release's proportions (SigLIP2 : DINOv3 :
hypernetwork file sizes about 0.17 : 1 : 0.24, bf16 files, bf16 compute, on the CPU).

Peak RAM growth of making one LoRA from 2 pictures, two ways, each in its own process (peaks must not carry over):
  sequential   the app's path: each model loaded, used for every picture and freed before the next
  all at once  the three models loaded first, then the same encoding and decoding
Target: sequential <= the largest model (DINOv3) + 15 %. Both ways must write the same LoRA.
Prints a table and one JSON line. Run: python benchmarks/bench_i2l.py [--scale 1.0] [--pictures 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.child import child_json  # noqa: E402

MIB = 2**20


def small_files(folder: Path, scale: float) -> dict:
    """Encoders and hypernetwork at about 1/34 of the release (scale 1): DINOv3 ~400 MB, SigLIP2 ~70 MB,
    hypernetwork ~100 MB in bf16, with the release's structure (34 hypernetwork blocks, gated DINOv3 MLP)."""
    import torch

    from models.z_image.i2l import tiny

    dino_layers = max(2, round(19 * scale))
    siglip = tiny.siglip(hidden=768, layers=max(2, round(5 * scale)), intermediate=3072)
    dinov3 = tiny.dinov3(hidden=1024, layers=dino_layers, intermediate=2048)
    blocks = (("layers_lora", 30), ("context_refiner_lora", 2), ("noise_refiner_lora", 2))
    hyper = tiny.hypernetwork_tensors(768 + 1024, dim=256, ffn=683, blocks=blocks, compress=max(8, round(32 * scale)))
    return tiny.write_files(folder, "diffsynth", torch.bfloat16, siglip, dinov3, hyper)


def child(mode: str, checkpoints: str, pictures: list[str], out: str) -> dict:
    """One way of making the LoRA; RSS growth measured from a reset kernel peak after a warm-up run of the same."""
    import torch

    from engine.placement.memory import _kernel_peak, _reset_kernel_peak, current_rss
    from engine.weights.files import FileLocator
    from models.z_image.i2l import run as R

    torch.set_num_threads(os.cpu_count() or 1)
    locator = FileLocator(Path(checkpoints), offline=True)
    # warm-up: one full run first, so imports, first-call caches and the allocator's pools are in place
    R.make_lora(R.prepare(pictures, "warm-up", Path(tempfile.mkdtemp()), locator), locator, "cpu")
    request = R.prepare(pictures, f"{mode}", Path(out), locator)
    R.free_memory()
    _reset_kernel_peak()
    before = current_rss()
    t0 = time.perf_counter()
    stages = {}
    if mode == "sequential":  # its per-model memory stages reset the kernel peak: take the highest of them too
        stages = R.make_lora(request, locator, "cpu").memory
    else:
        all_at_once(request, locator)
    seconds = time.perf_counter() - t0
    peak = max([_kernel_peak() or 0, current_rss()] + [st["peak_ram_bytes"] for st in stages.values()])
    return {"growth": peak - before, "seconds": seconds, "kernel_peak": _kernel_peak() is not None,
            "stage_growth": {k: v["peak_ram_bytes"] - before for k, v in stages.items()}}


def all_at_once(request, locator) -> None:
    """The same steps as make_lora, with the three models loaded before any runs (the reference)."""
    import torch

    from engine.lora.writer import write_new
    from models.z_image.i2l import files as F
    from models.z_image.i2l import pictures as P
    from models.z_image.i2l import run as R
    from models.z_image.i2l.identify import DINOV3, HYPERNETWORK, SIGLIP2

    device, dtype = torch.device("cpu"), R.DTYPES[request.dtype]
    parts = R.check_files({s.part.role: F.fetch(s, locator) for s in F.status(locator, dict(request.given))})
    placed = {role: R.Placed(parts[role], dtype, request.memory, device) for role in (SIGLIP2, DINOV3, HYPERNETWORK)}
    crops = P.crops(list(request.pictures))
    x = torch.cat([R.encode(placed[r], parts[r], crops).to(dtype) for r in (SIGLIP2, DINOV3)], dim=-1)
    tensors = R.decode(placed[HYPERNETWORK], x)
    write_new(request.target, tensors, R.metadata(request, parts, tensors, {}))
    for p in placed.values():
        p.release()


def run_child(*args) -> dict:
    return child_json(__file__, "--child", *args)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="model size factor (1: DINOv3 file about 400 MB)")
    ap.add_argument("--pictures", type=int, default=2)
    args = ap.parse_args()
    from safetensors.torch import load_file

    from models.z_image.i2l.identify import DINOV3, HYPERNETWORK, SIGLIP2
    from models.z_image.i2l.tiny import write_picture

    folder = Path(tempfile.mkdtemp(prefix="zimage-bench-i2l-"))
    files = small_files(folder / "ckpts", args.scale)
    sizes = {role: path.stat().st_size for role, path in files.items()}
    pictures = [str(write_picture(folder / f"p{i}.png", (640 + 64 * i, 480), seed=i)) for i in range(args.pictures)]
    results = {mode: run_child(mode, str(folder / "ckpts"), json.dumps(pictures), str(folder / mode))
               for mode in ("sequential", "all")}
    same = all((load_file(str(folder / "sequential" / "sequential.safetensors"))[k] ==
                v).all().item() for k, v in load_file(str(folder / "all" / "all.safetensors")).items())
    largest = max(sizes.values())
    seq, every = results["sequential"]["growth"], results["all"]["growth"]
    print(f"\nImage-to-LoRA memory: {args.pictures} pictures, CPU, bf16 files and compute; file sizes SigLIP2 "
          f"{sizes[SIGLIP2] / MIB:.0f} MiB, DINOv3 {sizes[DINOV3] / MIB:.0f} MiB, hypernetwork "
          f"{sizes[HYPERNETWORK] / MIB:.0f} MiB (sum {sum(sizes.values()) / MIB:.0f} MiB)\n")
    print(f"{'way':<34}{'peak RAM growth':>17}{'x largest model':>17}{'seconds':>9}{'target':>10}")
    print(f"{'sequential (the app)':<34}{seq / MIB:>13.0f} MiB{seq / largest:>16.3f}x"
          f"{results['sequential']['seconds']:>9.1f}{'<= 1.15x':>10}")
    print(f"{'all three loaded at once':<34}{every / MIB:>13.0f} MiB{every / largest:>16.3f}x"
          f"{results['all']['seconds']:>9.1f}{'':>10}")
    print(f"{'sequential / all at once':<34}{seq / every:>16.3f}x")
    print(f"same LoRA both ways: {same}; sequential per model: " + ", ".join(
        f"{k} {v / MIB:.0f} MiB" for k, v in results["sequential"]["stage_growth"].items()))
    print(json.dumps({"bench": "i2l", "pictures": args.pictures, "file_bytes": sizes,
                      "sequential_growth_bytes": seq, "all_at_once_growth_bytes": every,
                      "sequential_vs_largest": round(seq / largest, 4), "all_vs_largest": round(every / largest, 4),
                      "sequential_vs_all": round(seq / every, 4), "same_lora": same,
                      "sequential_stage_growth_bytes": results["sequential"]["stage_growth"],
                      "seconds": {k: round(v["seconds"], 2) for k, v in results.items()}}))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        mode, checkpoints, pictures, out = sys.argv[2:]
        print(json.dumps(child(mode, checkpoints, json.loads(pictures), out)))
    else:
        main()
