"""Control benchmark: the cost of Fun-ControlNet-Union per transformer pass, this app vs diffusers, same weights.

A small random model with the real layer counts (30 main layers, 2 noise-refiner and 2 context-refiner layers)
so block counts are the real ones; control modules of each version with the real control-layer counts.
Per pass: time inside the transformer (and diffusers' controlnet call), and blocks run, counted by hooks on every
transformer block. Targets: extra blocks per pass = the control blocks only (1.0: 2 + 6 = 8, 2.1: 2 + 15 = 17;
2.0 runs its 15 control layers at both stages, 30); time ratios vs no control in line with the block ratios.
Prints a table and one JSON line.
Run: python benchmarks/bench_control.py [--steps 4] [--size 256] [--repeats 3]
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.bench_core import small_parts  # noqa: E402

HOST = dict(dim=128, n_layers=30, heads=2, cap_dim=128, refiner_layers=2)
VERSIONS = {"1.0": ("z_image_control", 6), "2.1": ("z_image_control2_1", 15), "2.0": ("z_image_control2", 15)}


class PassMeter:
    """Counts transformer passes, transformer blocks run, and seconds spent in the hooked modules."""

    def __init__(self, timed_modules, block_roots):
        from diffusers.models.controlnets import controlnet_z_image as cz
        from diffusers.models.transformers.transformer_z_image import ZImageTransformerBlock

        kinds = (ZImageTransformerBlock, cz.ZImageTransformerBlock, cz.ZImageControlTransformerBlock)  # 1.0's refiner

        self.passes = self.blocks = 0
        self.seconds = 0.0
        self.handles = []
        seen = set()
        for root in block_roots:
            for module in root.modules():
                if isinstance(module, kinds) and id(module) not in seen:
                    seen.add(id(module))
                    self.handles.append(module.register_forward_pre_hook(self._block))
        for i, module in enumerate(timed_modules):
            self.handles.append(module.register_forward_pre_hook(self._start))
            self.handles.append(module.register_forward_hook(self._stop if i else self._stop_pass))

    def _block(self, *_):
        self.blocks += 1

    def _start(self, *_):
        self._t0 = time.perf_counter()

    def _stop(self, *_):
        self.seconds += time.perf_counter() - self._t0

    def _stop_pass(self, *_):
        self._stop()
        self.passes += 1

    def remove(self):
        for h in self.handles:
            h.remove()


def build(folder: Path):
    from safetensors.torch import save_file

    from models.z_image import tiny

    parts = small_parts(HOST)
    files = tiny.write_parts(folder, parts)
    defs, modules = [], {}
    for version, (arch, n) in VERSIONS.items():
        modules[version] = tiny.make_control(parts["transformer"], version, n)
        save_file(tiny.state_dict_for_file(modules[version]), str(folder / f"control_{version}.safetensors"))
        model = {"architecture": arch, "modules": str(folder / f"control_{version}.safetensors"), **files}
        defs.append(folder / f"bench_control_{version.replace('.', '')}.json")
        defs[-1].write_text(json.dumps({"model": model}))
    picture = np.zeros((512, 512, 3), np.uint8)
    picture[128:384, 160:352] = 255
    Image.fromarray(picture).save(folder / "map.png")
    return defs, modules, tiny.make_tokenizer(), folder / "map.png"


def diffusers_pipe(model, module, version, tok):
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImageControlNetPipeline

    from models.z_image import tiny

    net = tiny.diffusers_controlnet(module, version)
    pipe = ZImageControlNetPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=model.vae,
                                    text_encoder=model.encoder.text_encoder, tokenizer=tok,
                                    transformer=model.transformer, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(runs: dict, repeats: int) -> dict:
    """name -> (seconds per pass, blocks per pass); runs are interleaved and the best of `repeats` kept,
    so load from other processes on the machine skews every variant alike."""
    found = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (run, timed, roots) in runs.items():
            meter = PassMeter(timed, roots)
            try:
                run()
            finally:
                meter.remove()
            found[name].append((meter.seconds / meter.passes, meter.blocks / meter.passes))
    return {name: min(values) for name, values in found.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from engine.engine import Engine
    from engine.weights.files import FileLocator
    from engine.registry import Registry
    from models import families

    folder = Path(tempfile.mkdtemp(prefix="zimage-bench-control-"))
    defs, modules, tok, picture = build(folder)
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    engine = Engine(Registry(families(), extra_files=defs), FileLocator(checkpoints=folder / "ckpts", offline=True), dtype,
                    args.device)
    common = dict(prompt="a white box", seed=1, num_inference_steps=args.steps, width=args.size, height=args.size,
                  control_mode="raw", control_weight=0.8)
    rows, out = [], {"bench": "control", "size": args.size, "steps": args.steps}
    for version, (arch, n) in VERSIONS.items():
        mt = f"bench_control_{version.replace('.', '')}"
        s_on = engine.settings_for(mt, control_image=str(picture), **common)
        s_off = engine.settings_for(mt, control_image="", **common)
        engine.generate(s_on)  # load and warm up
        model = engine.model
        roots = [model.transformer, model.control.net]
        pipe = diffusers_pipe(model, modules[version], version, tok)
        image = Image.open(picture).convert("RGB")

        def run_diffusers():
            pipe(prompt=common["prompt"], control_image=image, controlnet_conditioning_scale=0.8, height=args.size,
                 width=args.size, num_inference_steps=args.steps, guidance_scale=0.0,
                 generator=torch.Generator("cpu").manual_seed(1))

        run_diffusers()
        found = measure({"none": (lambda: engine.generate(s_off), [model.transformer], roots),
                         "ours": (lambda: engine.generate(s_on), [model.transformer], roots),
                         "diffusers": (run_diffusers, [model.transformer, pipe.controlnet], roots + [pipe.controlnet])},
                        args.repeats)
        (base, base_blocks), (ours, ours_blocks), (theirs, theirs_blocks) = found["none"], found["ours"], \
            found["diffusers"]
        target = model.control.spec.blocks_per_pass
        rows.append((f"{version}: no control", base, base_blocks, 0, "", "1.00x"))
        rows.append((f"{version}: this app", ours, ours_blocks, ours_blocks - base_blocks, f"= {target}",
                     f"{ours / base:.2f}x"))
        rows.append((f"{version}: diffusers ZImageControlNetPipeline", theirs, theirs_blocks,
                     theirs_blocks - base_blocks, "", f"{theirs / base:.2f}x"))
        key = version.replace(".", "_")
        out.update({f"v{key}_extra_blocks": ours_blocks - base_blocks, f"v{key}_time_ratio": round(ours / base, 4),
                    f"v{key}_diffusers_extra_blocks": theirs_blocks - base_blocks,
                    f"v{key}_diffusers_time_ratio": round(theirs / base, 4),
                    f"v{key}_vs_diffusers": round(ours / theirs, 4)})
    out.update(blocks_per_pass_no_control=base_blocks)
    print(f"\nControl benchmark: host dim {HOST['dim']}, {HOST['n_layers']} layers, {args.size}x{args.size}, "
          f"{args.steps} steps, {args.device} {dtype}, {torch.get_num_threads()} threads, best of {args.repeats}\n")
    print(f"{'per transformer pass':<44}{'time':>11}{'blocks':>8}{'extra':>7}{'target':>8}{'vs none':>9}")
    for name, t, blocks, extra, target, ratio in rows:
        print(f"{name:<44}{t * 1000:>8.1f} ms{blocks:>8.0f}{extra:>7.0f}{target:>8}{ratio:>9}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
