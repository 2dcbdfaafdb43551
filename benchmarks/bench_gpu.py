"""GPU benchmark for users: seconds per 1024x1024 image, peak VRAM and peak RAM, for each memory profile and
for bf16 vs INT8 files, img2img at strength 0.5, the prompt enhancer's tokens per second, image to LoRA
(Z-Image-i2L: seconds per picture, peak VRAM, per --i2l-memory mode) and LoRA training (seconds per step and peak
VRAM on a bf16 and an INT8 frozen base). It prints tables and one JSON line to paste into an issue.

Run it with your Z-Image files in place (the same flags as the app find them):
  python benchmarks/bench_gpu.py [--model z_image] [--profiles 1,2,3,4,5] [--quantizations bf16,int8]
         [--steps 8] [--size 1024] [--repeats 2] [--checkpoints DIR] [--comfyui-models DIR] [--download]
         [--train-size 512] [--train-steps 10] [--no-train]
Each configuration runs in its own process: a profile pins RAM and hooks the models for the life of a
process, and peak figures must not carry over. Configurations whose files are not on disk are skipped
(make INT8 files with `python app.py quantize --model z_image`, or pass --download).
Without a CUDA GPU it says so and runs a reduced check on the CPU instead (a small random model, bf16 vs
INT8, no profile), which tests the script, not your hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.child import child_json  # noqa: E402

GIB = 2**30


def child(config: dict) -> dict:
    """One configuration: load (timed), warm up, then time `repeats` images; peaks over loading and generating."""
    import torch

    from engine.engine import Engine
    from engine.weights.files import FileLocator
    from engine.load_options import LoadOptions
    from engine.placement.memory import MemoryMonitor
    from engine.registry import ROOT as APP_ROOT, Registry
    from models import families

    options = LoadOptions(profile=config["profile"], transformer_quantization=config["quantization"],
                          text_encoder_quantization=config["quantization"])
    registry = Registry(families(), (APP_ROOT / "defaults", Path(config["finetunes"])),
                        extra_files=[Path(p) for p in config["model_defs"]])
    comfy = Path(config["comfyui"]) if config["comfyui"] else None
    engine = Engine(registry, FileLocator(Path(config["checkpoints"]), comfy), None, config["device"], options)
    monitor = MemoryMonitor(engine.device)
    t0 = time.perf_counter()
    with monitor.stage("loading"):
        engine.load(config["model"])
    load_seconds = time.perf_counter() - t0
    s = engine.settings_for(config["model"], prompt="a red fox in fresh snow, golden hour, detailed fur", seed=42,
                            num_inference_steps=config["steps"], width=config["size"], height=config["size"])
    engine.generate(s)  # warm-up (and first-use compilation with --compile)
    times, stages = [], [monitor.as_dict()["loading"]]
    for _ in range(config["repeats"]):
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        results = engine.generate(s)
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        stages += list(results[0].memory.values())
    return {"seconds_per_image": statistics.median(times), "load_seconds": load_seconds,
            "img2img_seconds": img2img_seconds(engine, s, results[0].image),
            "enhancer_tokens_per_s": enhancer_speed(engine, s),
            "peak_ram_bytes": max(st["peak_ram_bytes"] for st in stages),
            "peak_vram_bytes": max((st.get("peak_vram_bytes", 0) for st in stages), default=0),
            "profile_applied": engine.model.load_info.get("profile"),
            "file_names": {k: Path(v).name for k, v in engine.model.files.items()
                           if k in ("transformer", "text_encoder")}}


def img2img_seconds(engine, settings, image) -> float:
    """Seconds for an img2img of `image` at strength 0.5 (half the steps, plus the VAE encode)."""
    import dataclasses

    import torch

    path = Path(tempfile.mkdtemp(prefix="zimage-i2i-")) / "init.png"
    image.save(path)
    s = dataclasses.replace(settings, init_image=str(path), strength=0.5)
    engine.generate(s)  # warm-up
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    engine.generate(s)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def i2l_child(config: dict) -> dict:
    """Image to LoRA (Z-Image-i2L) from `pictures` synthetic 1024x1024 pictures: seconds per picture (the three
    models loaded, run and freed included), peak VRAM and RAM over the run, and how each model was placed."""
    import tempfile

    from engine.weights.files import FileLocator
    from models.z_image.i2l import run as R
    from models.z_image.i2l.tiny import write_picture

    comfy = Path(config["comfyui"]) if config["comfyui"] else None
    locator = FileLocator(Path(config["checkpoints"]), comfy)
    folder = Path(tempfile.mkdtemp(prefix="zimage-bench-i2l-"))
    pictures = [write_picture(folder / f"p{i}.png", (1024, 1024), seed=i) for i in range(config["pictures"])]
    request = R.prepare(pictures, "bench", folder, locator, memory=config["memory"])
    result = R.make_lora(request, locator, config["device"] or ("cuda" if _cuda() else "cpu"))
    stages = result.memory.values()
    return {"seconds_per_picture": result.seconds / len(pictures), "seconds": result.seconds,
            "peak_vram_bytes": max((st.get("peak_vram_bytes", 0) for st in stages), default=0),
            "peak_ram_bytes": max(st["peak_ram_bytes"] for st in stages), "modes": result.modes}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def i2l_rows(args, base: dict, cuda: bool) -> list[dict]:
    """The i2L rows: one per --i2l-memory mode on a GPU (files found as the app finds them, else skipped), or a
    reduced check with tiny random files on the CPU."""
    from engine.weights.files import FileLocator
    from models.z_image.i2l.files import status

    if not cuda:
        from models.z_image.i2l.tiny import write_files

        folder = Path(tempfile.mkdtemp(prefix="zimage-bench-gpu-i2l-"))
        write_files(folder / "ckpts")
        configs = [dict(base, checkpoints=str(folder / "ckpts"), comfyui=None, device="cpu", memory="auto",
                        pictures=min(args.i2l_pictures, 2))]
    else:
        locator = FileLocator(Path(args.checkpoints), Path(args.comfyui_models) if args.comfyui_models else None)
        missing = [s.part.label for s in status(locator) if s.path is None]
        if missing and not args.download:
            return [{"memory": m, "skipped": f"not on disk: {', '.join(missing)}"}
                    for m in args.i2l_memory.split(",")]
        configs = [dict(base, memory=m, pictures=args.i2l_pictures) for m in args.i2l_memory.split(",")]
    rows = []
    for config in configs:
        result = child_json(__file__, "--i2l-child", json.dumps(config), check=False)
        rows.append({"memory": config["memory"], "pictures": config["pictures"], **result})
        print(f"done: i2L {config['memory']}: {result.get('error') or 'ok'}", file=sys.stderr)
    return rows


def print_i2l(rows: list[dict]) -> None:
    print(f"\n{'i2L memory':<12}{'pictures':>9}{'s / picture':>13}{'peak VRAM':>12}{'peak RAM':>11}  models placed")
    for row in rows:
        if "seconds_per_picture" in row:
            vram = f"{row['peak_vram_bytes'] / GIB:.2f} GiB" if row["peak_vram_bytes"] else "-"
            modes = ", ".join(f"{k} {v}" for k, v in row["modes"].items())
            print(f"{row['memory']:<12}{row['pictures']:>9}{row['seconds_per_picture']:>11.1f} s{vram:>12}"
                  f"{row['peak_ram_bytes'] / GIB:>7.2f} GiB  {modes}")
        else:
            print(f"{row['memory']:<12}  {row.get('error') or row.get('skipped')}")


def enhancer_speed(engine, settings) -> float | None:
    """Tokens per second of the prompt enhancer (the loaded text encoder writing up to 400 tokens)."""
    from engine.errors import UserError

    rates = []
    try:
        engine.enhance(settings, on_token=lambda n, rate: rates.append(rate))
    except UserError:
        pass  # random weights (the reduced CPU check) may write no usable text; the speed still counts
    return rates[-1] if rates else None


def machine() -> dict:
    import psutil
    import torch

    info = {"os": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "ram_gib": round(psutil.virtual_memory().total / GIB, 1)}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, vram_gib=round(props.total_memory / GIB, 1), cuda=torch.version.cuda)
    return info


def files_present(model: str, quantization: str, args) -> str | None:
    """None when the configuration's files are on disk, else what is missing."""
    from app.setup import make_engine
    from engine.load_options import LoadOptions

    engine = make_engine(args)
    engine.options = LoadOptions(transformer_quantization=quantization, text_encoder_quantization=quantization)
    model_def = engine.registry.get(model)
    try:
        statuses = engine.registry.handler(model).file_status(model_def, engine.locator, engine.options)
    except Exception as exc:  # a UserError saying the model lists no such file
        return str(exc)
    missing = [s.source for s in statuses if s.path is None]
    return f"not on disk: {', '.join(missing)}" if missing else None


def run(config: dict) -> dict:
    return child_json(__file__, "--child", json.dumps(config), check=False)


def reduced_cpu_setup(folder: Path) -> tuple[Path, str]:
    """The small random model of bench_formats with bf16 and INT8 files (no weights needed)."""
    from benchmarks.bench_formats import TYPE, build

    return build(folder), TYPE


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="z_image")
    ap.add_argument("--profiles", default="1,2,3,4,5")
    ap.add_argument("--quantizations", default="bf16,int8")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--checkpoints", default="ckpts")
    ap.add_argument("--comfyui-models")
    ap.add_argument("--model-def", action="append", default=[])
    ap.add_argument("--finetunes", default=str(ROOT / "finetunes"))
    ap.add_argument("--download", action="store_true", help="download missing files instead of skipping")
    ap.add_argument("--i2l-memory", default="auto", help="image-to-LoRA rows: memory modes to time, e.g. "
                                                         "auto,stream,int8 (the app's --i2l-memory)")
    ap.add_argument("--i2l-pictures", type=int, default=4, help="pictures per image-to-LoRA run")
    ap.add_argument("--train-size", type=int, default=512, help="training rows: image size (default 512)")
    ap.add_argument("--train-steps", type=int, default=10, help="training rows: timed steps (default 10)")
    ap.add_argument("--no-train", action="store_true", help="skip the LoRA training rows")
    args = ap.parse_args()
    import torch

    info = machine()
    profiles = [int(p) for p in args.profiles.split(",")]
    quantizations = args.quantizations.split(",")
    base = dict(model=args.model, steps=args.steps, size=args.size, repeats=args.repeats, device=None,
                checkpoints=args.checkpoints, comfyui=args.comfyui_models, model_defs=args.model_def,
                finetunes=args.finetunes)
    if torch.cuda.is_available():
        title = f"GPU benchmark: {info['gpu']} ({info['vram_gib']} GiB), {info['ram_gib']} GiB RAM"
        configs = [dict(base, profile=p, quantization=q) for q in quantizations for p in profiles]
        ns = argparse.Namespace(checkpoints=args.checkpoints, comfyui_models=args.comfyui_models, dtype=None,
                                device=None, model_def=args.model_def, finetunes=args.finetunes)
        skipped = {} if args.download else {q: files_present(args.model, q, ns) for q in quantizations}
    else:
        print("No CUDA GPU: memory profiles need one, so this is a reduced check on the CPU (a small random "
              "model, bf16 vs INT8, no profile). It tests the script, not a GPU: run it on a machine with an "
              "NVIDIA GPU to get figures worth reporting.\n", file=sys.stderr)
        folder = Path(tempfile.mkdtemp(prefix="zimage-bench-gpu-"))
        finetunes, model = reduced_cpu_setup(folder)
        base.update(model=model, device="cpu", checkpoints=str(folder), finetunes=str(finetunes),
                    size=min(args.size, 512), steps=min(args.steps, 4), repeats=1)
        title = f"REDUCED CPU CHECK (no GPU; not a GPU figure), {info['ram_gib']} GiB RAM"
        configs = [dict(base, profile=None, quantization=q) for q in quantizations]
        skipped = {}

    rows = []
    for config in configs:
        reason = skipped.get(config["quantization"])
        result = {"skipped": reason} if reason else run(config)
        rows.append({"profile": config["profile"], "quantization": config["quantization"], **result})
        print(f"done: profile {config['profile']}, {config['quantization']}: "
              f"{result.get('error') or result.get('skipped') or 'ok'}", file=sys.stderr)

    print(f"\n{title}; {base['size']}x{base['size']}, {base['steps']} steps, model {base['model']}, "
          f"median of {base['repeats']}\n")
    print(f"{'profile':<9}{'files':<7}{'s / image':>11}{'i2i 0.5':>10}{'peak VRAM':>12}{'peak RAM':>11}"
          f"{'load':>9}{'enhancer':>12}")
    for row in rows:
        profile = "none" if row["profile"] is None else str(row["profile"])
        if "seconds_per_image" in row:
            vram = f"{row['peak_vram_bytes'] / GIB:.2f} GiB" if row["peak_vram_bytes"] else "-"
            print(f"{profile:<9}{row['quantization']:<7}{row['seconds_per_image']:>9.2f} s"
                  f"{row['img2img_seconds']:>8.2f} s{vram:>12}"
                  f"{row['peak_ram_bytes'] / GIB:>7.2f} GiB{row['load_seconds']:>7.1f} s"
                  f"{row['enhancer_tokens_per_s'] or 0:>8.1f} t/s")
        else:
            print(f"{profile:<9}{row['quantization']:<7}  {row.get('error') or row.get('skipped')}")
    i2l = i2l_rows(args, base, torch.cuda.is_available())
    print_i2l(i2l)
    train = [] if args.no_train else training_rows(args, base, quantizations, skipped)
    if train:
        print(f"\nLoRA training: rank 16, batch 1, {train[0]['size']}x{train[0]['size']}, gradient checkpointing, "
              f"training adapter: {train[0]['adapter']}\n")
        print(f"{'files':<7}{'s / step':>10}{'steps/s':>9}{'peak VRAM':>12}{'peak memory':>14}")
        for row in train:
            if "seconds_per_step" in row:
                vram = f"{row['peak_bytes'] / GIB:.2f} GiB" if row["device"] == "cuda" else "-"
                print(f"{row['quantization']:<7}{row['seconds_per_step']:>10.2f}{1 / row['seconds_per_step']:>9.2f}"
                      f"{vram:>12}{row['peak_bytes'] / GIB:>10.2f} GiB")
            else:
                print(f"{row['quantization']:<7}  {row.get('error') or row.get('skipped')}")
    print(json.dumps({"bench": "gpu", "machine": info, "size": base["size"], "steps": base["steps"],
                      "model": base["model"], "rows": rows, "i2l": i2l, "training": train}))


def training_rows(args, base: dict, quantizations: list, skipped: dict) -> list:
    """Seconds per training step and peak memory for each file kind (benchmarks/bench_train.py's memory run).
    The Turbo training adapter is used when it is on disk (or with --download), else the row says none."""
    import torch

    from benchmarks.bench_train import run_child

    cuda = torch.cuda.is_available()
    checkpoints = Path(base["checkpoints"])
    adapter = "auto" if args.download or (checkpoints / "zimage_turbo_training_adapter_v1.safetensors").is_file() \
        else "none"
    size, steps = (args.train_size, args.train_steps) if cuda else (min(args.train_size, 256), 2)
    rows = []
    for q in quantizations:
        row = {"quantization": q, "size": size, "adapter": adapter, "device": "cuda" if cuda else "cpu"}
        if skipped.get(q):
            rows.append({**row, "skipped": skipped[q]})
            continue
        config = dict(model=base["model"], finetunes=base["finetunes"], checkpoints=base["checkpoints"],
                      comfyui=base["comfyui"], model_defs=base["model_defs"], size=size, steps=steps, warmup=1,
                      rank=16, device=base["device"], dtype=None if cuda else "bfloat16", quantization=q,
                      adapter=adapter if cuda else "none", threads=None if cuda else 1)
        rows.append({**row, **run_child("memory", config)})
        print(f"done: training, {q}: {rows[-1].get('error', 'ok')}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
    elif len(sys.argv) == 3 and sys.argv[1] == "--i2l-child":
        print(json.dumps(i2l_child(json.loads(sys.argv[2]))))
    else:
        main()
