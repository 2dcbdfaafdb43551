"""Core engine benchmark on a small random model: this pipeline vs diffusers' ZImagePipeline, same weights.

Prints a table and one JSON line. Ratios, not absolute seconds, are the figures to compare:
  time per image (target <= 1.05x diffusers), transformer passes per image (= steps),
  text-encoder calls for a repeated prompt (target 0), peak RSS growth loading a transformer file
  vs the file's size (target <= 1.15x).
Run: python benchmarks/bench_core.py [--steps 8] [--size 512] [--repeats 3]
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

import torch  # noqa: E402

SMALL = dict(dim=512, n_layers=4, heads=4, cap_dim=128, refiner_layers=2)


def rss_probe(path: str) -> None:
    """Child process: load a transformer file and print RSS growth (bytes) while loading."""
    import tempfile

    from safetensors.torch import save_file

    from engine.placement.memory import _kernel_peak, _reset_kernel_peak, current_rss
    from models.z_image import loader, tiny

    # warm up every import and first-call cache with a tiny file: they are not part of loading
    warm = Path(tempfile.mkdtemp()) / "warm.safetensors"
    save_file(tiny.state_dict_for_file(tiny.make_transformer()), str(warm))
    loader.load_transformer(warm, {}, torch.float32)
    _reset_kernel_peak()  # the kernel's peak RSS now starts from here
    before = current_rss()
    model = loader.load_transformer(Path(path), {}, torch.float32)
    sum(float(p.sum()) for p in model.parameters())  # touch every weight, as a first generation would
    peak = max(_kernel_peak() or 0, current_rss())
    print(json.dumps({"growth": peak - before, "rss_growth_after": current_rss() - before}))


def small_parts(shape: dict) -> dict:
    """Random transformer of `shape`, a 4-layer Qwen3 encoder of its caption width, and the tiny VAE."""
    from models.z_image import tiny

    return {"transformer": tiny.make_transformer(**shape),
            "text_encoder": tiny.make_text_encoder(hidden=shape["cap_dim"], layers=4, heads=4, kv_heads=2),
            "vae": tiny.make_vae()}


def build(folder: Path):
    from models.z_image import tiny

    models = small_parts(SMALL)
    model_json = {"model": {"architecture": "z_image", **tiny.write_parts(folder, models)}}
    (folder / "bench_small.json").write_text(json.dumps(model_json))
    return models, tiny.make_tokenizer()


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to time a GPU (bfloat16 there)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    from engine.engine import Engine
    from engine.weights.files import FileLocator
    from engine.registry import Registry
    from models import families

    folder = Path(tempfile.mkdtemp(prefix="zimage-bench-"))
    models, tok = build(folder)
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    engine = Engine(Registry(families(), extra_files=[folder / "bench_small.json"]), FileLocator(offline=True), dtype, args.device)
    settings = engine.settings_for("bench_small", prompt="a lighthouse on a cliff at dusk", seed=1,
                                   num_inference_steps=args.steps, width=args.size, height=args.size)
    engine.generate(settings)  # load + warm up
    model = engine.model
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=model.vae,
                          text_encoder=model.encoder.text_encoder, tokenizer=tok, transformer=model.transformer)
    pipe.set_progress_bar_config(disable=True)

    def run_diffusers():
        pipe(prompt=settings.prompt, height=args.size, width=args.size, num_inference_steps=args.steps,
             guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(1))

    run_diffusers()  # warm up
    calls0, passes0 = model.encoder.calls, model.passes
    engine.generate(settings)
    te_calls, passes = model.encoder.calls - calls0, model.passes - passes0
    diff_passes = []
    hook = model.transformer.register_forward_hook(lambda *a: diff_passes.append(1))
    run_diffusers()
    hook.remove()
    # the three paths take turns in every round, so a change in the machine's load hits them alike
    paths = {"ours": lambda: engine.generate(settings), "theirs": run_diffusers,
             "new": lambda: engine.generate(settings.__class__(**{**settings.to_dict(),
                                                                  "prompt": f"new prompt {time.time()}"}))}
    times = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            times[name].append(timed(fn, 1))
    ours, theirs, ours_new_prompt = (statistics.median(times[k]) for k in ("ours", "theirs", "new"))

    file = folder / "transformer.safetensors"
    rss = child_json(__file__, "--rss-probe", str(file))
    size = file.stat().st_size

    rows = [
        ("time per image, this app (repeated prompt)", f"{ours:.3f} s", f"{ours / theirs:.3f}x", "<= 1.05x"),
        ("time per image, this app (new prompt)", f"{ours_new_prompt:.3f} s", f"{ours_new_prompt / theirs:.3f}x",
         "<= 1.05x"),
        ("time per image, diffusers ZImagePipeline", f"{theirs:.3f} s", "1.000x", ""),
        ("transformer passes per image (this app)", f"{passes:.0f}", f"steps = {args.steps}", f"= {args.steps}"),
        ("transformer passes per image (diffusers)", f"{len(diff_passes):.0f}", "", ""),
        ("text-encoder calls, repeated prompt", f"{te_calls:.0f}", "", "0"),
        ("peak RSS growth loading transformer", f"{rss['growth'] / 2**20:.1f} MiB",
         f"{rss['growth'] / size:.3f}x file", "<= 1.15x"),
        ("transformer file size", f"{size / 2**20:.1f} MiB", "", ""),
    ]
    print(f"\nCore benchmark: dim {SMALL['dim']}, {SMALL['n_layers']} layers, {args.size}x{args.size}, "
          f"{args.steps} steps, {args.device} {dtype}, {torch.get_num_threads()} threads, median of {args.repeats}\n")
    print(f"{'measure':<46}{'value':>14}{'ratio':>20}{'target':>10}")
    for row in rows:
        print(f"{row[0]:<46}{row[1]:>14}{row[2]:>20}{row[3]:>10}")
    print(json.dumps({"bench": "core", "time_ratio_repeated_prompt": round(ours / theirs, 4),
                      "time_ratio_new_prompt": round(ours_new_prompt / theirs, 4),
                      "seconds_ours": round(ours, 4), "seconds_diffusers": round(theirs, 4),
                      "passes_per_image": passes, "text_encoder_calls_repeated": te_calls,
                      "load_rss_growth_ratio": round(rss["growth"] / size, 4), "file_bytes": size}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rss-probe":
        rss_probe(sys.argv[2])
    else:
        main()
