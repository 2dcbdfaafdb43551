"""Images-in benchmark on a small random model and a small RRDBNet (ESRGAN-architecture) upscaler.

Prints a table and one JSON line:
  img2img at strength 0.5 vs text-to-image, same model and size (target about 0.5x plus the VAE encode: only the
  schedule's last half runs); its transformer passes (half the steps);
  peak RAM growth of a 4x upscale, tiled vs untiled, at two picture sizes (target: the tiled peak bounded by the
  tile, about the same for both sizes besides the finished picture; the untiled one grows with the picture).
Run: python benchmarks/bench_images.py [--steps 8] [--size 512] [--repeats 3] [--upscale-size 256]
Memory probes run in child processes (a fresh peak each).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.child import child_json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.bench_core import build, timed  # noqa: E402

UPSCALER = dict(nf=32, gc=32, blocks=2)  # a small ESRGAN (real ones: nf 64, 23 blocks): same activations per pixel
PROBE_TILE = 128  # input pixels per tile in the probe


def upscale_probe(mode: str, size: int) -> None:
    """Child: peak RSS growth (bytes) of a 4x upscale of a size x size picture, tiled or untiled."""
    from engine.images.upscalers import Upscalers, run_tiled
    from engine.placement.memory import _kernel_peak, _reset_kernel_peak, current_rss
    from tests import upscaler_files as UF

    folder = Path(tempfile.mkdtemp(prefix="zimage-ups-"))
    UF.write(folder, "x4.safetensors", UF.realesrgan_x4(**UPSCALER))
    model = Upscalers(folder).load("x4")
    rng = np.random.default_rng(0)
    picture = Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))
    run_tiled(model, picture.resize((64, 64)), torch.device("cpu"), tile=32, overlap=8)  # warm-up
    _reset_kernel_peak()
    before = current_rss()
    if mode == "tiled":
        run_tiled(model, picture, torch.device("cpu"), tile=PROBE_TILE, overlap=16)
    else:
        x = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        with torch.inference_mode():
            y = model(x).clamp(0, 1)
        Image.fromarray((y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    peak = max(_kernel_peak() or 0, current_rss())
    print(json.dumps({"growth": peak - before}))


def probe(mode: str, size: int) -> int:
    return child_json(__file__, "--upscale-probe", mode, str(size))["growth"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--upscale-size", type=int, default=256, help="the smaller probe picture's side (and twice it)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from engine.engine import Engine
    from engine.registry import Registry
    from engine.weights.files import FileLocator
    from models import families

    folder = Path(tempfile.mkdtemp(prefix="zimage-bench-images-"))
    build(folder)
    engine = Engine(Registry(families(), extra_files=[folder / "bench_small.json"]), FileLocator(offline=True))
    text = engine.settings_for("bench_small", prompt="a lighthouse on a cliff at dusk", seed=1,
                               num_inference_steps=args.steps, width=args.size, height=args.size)
    init = folder / "init.png"
    engine.generate(text)[0].image.save(init)  # load + warm up; the init picture
    img2img = text.__class__(**{**text.to_dict(), "init_image": str(init), "strength": 0.5})
    engine.generate(img2img)  # warm up
    model = engine.model
    t_text = timed(lambda: engine.generate(text), args.repeats)
    passes0 = model.passes
    t_i2i = timed(lambda: engine.generate(img2img), args.repeats)
    passes = (model.passes - passes0) / args.repeats
    from models.z_image.vae import encode_mode, pixels

    pix = pixels(Image.open(init).convert("RGB"), model)
    t_encode = timed(lambda: encode_mode(model, pix), args.repeats)
    expected = 0.5 + t_encode / t_text

    small, big = args.upscale_size, args.upscale_size * 2
    mem = {(mode, size): probe(mode, size) for mode in ("untiled", "tiled") for size in (small, big)}
    out_bytes = {size: (size * 4) ** 2 * 3 * 4 * 2 for size in (small, big)}  # the blend buffers (float32 + weights)

    mib = 2**20
    rows = [
        (f"text-to-image, {args.size}px, {args.steps} steps", f"{t_text:.3f} s", "1.000x", ""),
        ("img2img, strength 0.5", f"{t_i2i:.3f} s", f"{t_i2i / t_text:.3f}x", f"~{expected:.2f}x"),
        ("  of which the VAE encode", f"{t_encode:.3f} s", f"{t_encode / t_text:.3f}x", ""),
        ("img2img transformer passes", f"{passes:.0f}", f"of {args.steps} steps", f"{args.steps // 2}"),
    ]
    for size in (small, big):
        rows.append((f"4x upscale {size}->{size * 4}px, untiled", f"{mem[('untiled', size)] / mib:.0f} MiB", "", ""))
        rows.append((f"4x upscale {size}->{size * 4}px, tiled ({PROBE_TILE}px)", f"{mem[('tiled', size)] / mib:.0f} MiB",
                     f"{mem[('tiled', size)] / mem[('untiled', size)]:.3f}x untiled", ""))
        rows.append(("  of which the finished picture's blend buffers", f"{out_bytes[size] / mib:.0f} MiB", "", ""))
    growth_untiled = mem[("untiled", big)] / mem[("untiled", small)]
    tile_part = [mem[("tiled", s)] - out_bytes[s] for s in (small, big)]
    rows.append(("peak growth, 4x the pixels: untiled", f"{growth_untiled:.2f}x", "", "~4x"))
    rows.append(("peak growth, 4x the pixels: tiled, less the picture", f"{tile_part[1] / max(tile_part[0], 1):.2f}x",
                 "", "~1x"))

    print(f"\nImages-in benchmark: small random model ({args.size}x{args.size}, {args.steps} steps, cpu), "
          f"RRDBNet nf {UPSCALER['nf']} x{UPSCALER['blocks']} blocks, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}\n")
    print(f"{'measure':<52}{'value':>12}{'ratio':>22}{'target':>10}")
    for row in rows:
        print(f"{row[0]:<52}{row[1]:>12}{row[2]:>22}{row[3]:>10}")
    print(json.dumps({"bench": "images", "img2img_ratio": round(t_i2i / t_text, 4), "expected_ratio": round(expected, 4),
                      "seconds_text": round(t_text, 4), "seconds_img2img": round(t_i2i, 4),
                      "seconds_encode": round(t_encode, 4), "img2img_passes": passes,
                      "upscale_peak_bytes": {f"{m}_{s}": v for (m, s), v in mem.items()}}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--upscale-probe":
        upscale_probe(sys.argv[2], int(sys.argv[3]))
    else:
        main()
