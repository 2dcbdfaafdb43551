"""Building the engine from command-line flags: the one place front-ends put the parts together (model
families found in models/, the registry of model types, where files are, devices and load options)."""

from __future__ import annotations

from pathlib import Path

from engine.errors import UserError


def make_engine(args):
    from engine.engine import Engine
    from engine.registry import ROOT, Registry
    from engine.weights.files import FileLocator
    from models import families

    folders = (ROOT / "defaults", Path(args.finetunes) if args.finetunes else ROOT / "finetunes")
    registry = Registry(families(), folders, extra_files=[Path(p) for p in args.model_def])
    locator = FileLocator(Path(args.checkpoints), Path(args.comfyui_models) if args.comfyui_models else None)
    if args.comfyui_models and not Path(args.comfyui_models).is_dir():
        raise UserError(f"--comfyui-models {args.comfyui_models}: no such folder")
    components = {}
    for flag, field in (("text_encoder", "text_encoder_URLs"), ("vae", "vae_URLs")):
        path = getattr(args, flag, None)
        if path:
            if not Path(path).exists():
                raise UserError(f"--{flag.replace('_', '-')} {path}: no such file or folder")
            components[field] = str(Path(path).resolve())
    lora_dirs = {h.family: h.lora_dir(args) for h in set(registry.handlers.values())}
    return Engine(registry, locator, args.dtype, args.device, load_options_from_args(args), components, lora_dirs,
                  limits_from_args(args), inputs_dir=output_folder(args) / "inputs",
                  upscaler_dir=getattr(args, "upscaler_dir", None))


def output_folder(args) -> Path:
    """Where this command writes its pictures (and keeps their input pictures, by content): --output's folder."""
    output = Path(getattr(args, "output", None) or "outputs")
    return output.parent if output.suffix.lower() == ".png" else output


def limits_from_args(args):
    """--max-batch, --max-count, --max-megapixels over the defaults (engine.limits.Limits)."""
    from engine.limits import Limits

    given = {"batch_size": getattr(args, "max_batch", None), "count": getattr(args, "max_count", None)}
    megapixels = getattr(args, "max_megapixels", None)
    if megapixels is not None:
        if not megapixels > 0:
            raise UserError(f"--max-megapixels {megapixels}: give a positive number of megapixels")
        given["pass_pixels"] = int(megapixels * 2**20)
    return Limits(**{k: v for k, v in given.items() if v is not None}).validate()


def load_options_from_args(args):
    from engine.load_options import LoadOptions

    given = {name: getattr(args, name, None) for name in (
        "transformer_quantization", "text_encoder_quantization", "profile", "preload_mb", "compile", "attention",
        "vram_safety_coefficient", "text_encoder_device")}
    return LoadOptions(**{k: v for k, v in given.items() if v is not None and v is not False}).validate()


class WorkerEngine:
    """Builds a worker's engine in its own process (engine.workers): the same flags, on the worker's device.
    Picklable: it carries the flags, not an engine."""

    def __init__(self, args):
        self.flags = {k: v for k, v in vars(args).items() if not callable(v)}

    def __call__(self, device: str):
        import argparse

        return make_engine(argparse.Namespace(**{**self.flags, "device": device}))
