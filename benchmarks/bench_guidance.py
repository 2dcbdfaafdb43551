"""Guidance and sampler benchmark on the small random model of bench_core (same size, same weights recipe).

Prints a table and one JSON line. Ratios, measured in the same run, are the figures to compare:
  time per step with NAG vs without (target <= 1.35x), TwinFlow 2-step image vs Turbo 8-step image
  (expect about 0.25x), transformer passes per image for each sampler (8 steps).
The NAG step is timed where the small model's sequence-to-width ratio matches the real 6B model's at
1024x1024 (about 4600 tokens / 3840 channels = 1.2): 384x384 here (576 image + 64 caption tokens / 512);
--size 512 and up weigh attention (the part NAG doubles for image tokens) more than the real model does.
Run: python benchmarks/bench_guidance.py [--size 384] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_core import SMALL, build, timed  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, waves breaking on the rocks below, warm light in the windows"
NEGATIVE = "blurry, low quality, watermark, text, oversaturated colours, extra limbs, jpeg artifacts"


def add_twinflow(folder: Path) -> None:
    """A TwinFlow transformer of the same size beside bench_core's files, and its model type."""
    from safetensors.torch import save_file

    from models.z_image import tiny

    save_file(tiny.state_dict_for_file(tiny.make_transformer(twinflow=True, **SMALL)),
              str(folder / "transformer_twinflow.safetensors"))
    model_json = json.loads((folder / "bench_small.json").read_text())
    model_json["model"].update(architecture="z_image_twinflow_turbo",
                               URLs=str(folder / "transformer_twinflow.safetensors"))
    (folder / "bench_twinflow.json").write_text(json.dumps(model_json))


def step_times(engine, settings, repeats):
    """Seconds per transformer step without and with NAG, on the same latents."""
    from engine.sampling.schedules import shifted_simple
    from models.z_image.nag import NegativeAttentionGuidance
    from models.z_image.pipeline import initial_noise, make_model_fn

    model = engine.load(settings.model_type)
    cond, negative = model.encoder.encode([settings.prompt, settings.negative_prompt])
    sigmas = shifted_simple(8, 3.0).to(model.device)
    x = initial_noise(settings, torch.Generator().manual_seed(0), 16).to(model.device)
    plain = make_model_fn(model, settings, lambda sigma: [cond] * x.shape[0], None)
    nag = NegativeAttentionGuidance(model.transformer, negative, 3.0, 2.5, 0.25)
    guided = nag.wrap(plain, sigmas)
    guided(x, sigmas[0])  # warm up (and the negative's one-time refinement)
    plain(x, sigmas[0])
    times = {plain: [], guided: []}
    for _ in range(repeats):  # interleaved, so a busy machine slows both alike
        for fn in times:
            times[fn] += [timed(lambda: fn(x, sigmas[i]), 1) for i in range(4)]
    return statistics.median(times[plain]), statistics.median(times[guided]), len(cond), len(negative)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to time a GPU (bfloat16 there)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from engine.engine import Engine
    from engine.weights.files import FileLocator
    from engine.registry import Registry
    from models import families
    from engine.sampling.samplers import SAMPLERS

    folder = Path(tempfile.mkdtemp(prefix="zimage-bench-guidance-"))
    build(folder)
    add_twinflow(folder)
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    registry = Registry(families(), extra_files=[folder / "bench_small.json", folder / "bench_twinflow.json"])
    engine, twin_engine = (Engine(registry, FileLocator(offline=True), dtype, args.device) for _ in range(2))
    turbo = engine.settings_for("bench_small", prompt=PROMPT, negative_prompt=NEGATIVE, seed=1, width=args.size,
                                height=args.size, num_inference_steps=8, nag_scale=1.0)
    t_plain, t_nag, n_pos, n_neg = step_times(engine, turbo, args.repeats)

    twin = dataclasses.replace(turbo, model_type="bench_twinflow", sampler="twinflow", num_inference_steps=2)
    runs = [(engine, turbo, []), (twin_engine, twin, [])]
    for _ in range(args.repeats + 1):  # interleaved; the first round loads and warms up
        for eng, s, times in runs:
            times.append(timed(lambda: eng.generate(s), 1))
    t_turbo, t_twin = (statistics.median(times[1:]) for _, _, times in runs)
    before = twin_engine.model.passes
    twin_engine.generate(twin)
    twin_passes = twin_engine.model.passes - before

    passes = {}
    small = dataclasses.replace(turbo, width=256, height=256)  # passes do not depend on the size
    for name, info in SAMPLERS.items():
        eng = twin_engine if info.time_target else engine
        s = dataclasses.replace(twin if info.time_target else small, sampler=name, width=256, height=256,
                                num_inference_steps=8)
        before = eng.model.passes
        eng.generate(s)
        passes[name] = eng.model.passes - before

    rows = [
        ("time per step, no NAG", f"{t_plain * 1000:.1f} ms", "1.000x", ""),
        ("time per step, NAG", f"{t_nag * 1000:.1f} ms", f"{t_nag / t_plain:.3f}x", "<= 1.35x"),
        ("image, Turbo 8 steps (euler)", f"{t_turbo:.3f} s", "1.000x", ""),
        ("image, TwinFlow 2 steps (unified)", f"{t_twin:.3f} s", f"{t_twin / t_turbo:.3f}x", "~0.25x"),
        ("transformer passes, TwinFlow 2 steps", f"{twin_passes}", "", "= 2"),
    ] + [(f"passes per image, {name} (8 steps)", f"{n}", f"{SAMPLERS[name].passes_per_step}/step", "")
         for name, n in passes.items()]
    print(f"\nGuidance benchmark: dim {SMALL['dim']}, {SMALL['n_layers']} layers, {args.size}x{args.size} "
          f"({(args.size // 16) ** 2} image tokens, captions {n_pos} / negative {n_neg} tokens), {args.device} "
          f"{dtype}, {torch.get_num_threads()} threads, median of {args.repeats}\n")
    print(f"{'measure':<42}{'value':>12}{'ratio':>14}{'target':>10}")
    for row in rows:
        print(f"{row[0]:<42}{row[1]:>12}{row[2]:>14}{row[3]:>10}")
    print(json.dumps({"bench": "guidance", "size": args.size, "nag_step_ratio": round(t_nag / t_plain, 4),
                      "seconds_per_step": round(t_plain, 4), "seconds_per_step_nag": round(t_nag, 4),
                      "twinflow_2_vs_turbo_8": round(t_twin / t_turbo, 4), "seconds_turbo_8": round(t_turbo, 4),
                      "seconds_twinflow_2": round(t_twin, 4), "twinflow_passes": twin_passes,
                      "passes_per_image_8_steps": passes}))


if __name__ == "__main__":
    main()
