"""Command line: `generate`, `models`, `settings`, `make-test-model`; no sub-command launches the UI."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.errors import ModelDefinitionError, SettingsError, UserError
from core.files import human_size
from core.settings import CONTROL_FITS, CONTROL_MODES, DEPTH_MODELS, size_presets


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line and exit code 2, instead of argparse's usage dump
        sys.stderr.write(f"error: {message} (see --help)\n")
        raise SystemExit(2)


def common_options(subcommand: bool = False) -> argparse.ArgumentParser:
    """Flags every command takes. A sub-command's copy has no defaults, so it keeps values given before it."""
    p = _Parser(add_help=False, argument_default=argparse.SUPPRESS if subcommand else None)
    g = p.add_argument_group("files and devices")
    g.add_argument("--checkpoints", metavar="DIR", **({} if subcommand else {"default": "ckpts"}),
                   help="where model files are found and downloaded (default: ckpts/)")
    g.add_argument("--comfyui-models", metavar="DIR",
                   help="a ComfyUI models/ folder: its diffusion_models/, text_encoders/, vae/ files are used in place")
    g.add_argument("--model-def", action="append", metavar="FILE.json", **({} if subcommand else {"default": []}),
                   help="a model JSON from anywhere (its file name is the model type); repeatable")
    g.add_argument("--lora-dir-z-image", metavar="DIR", help="LoRA folder for Z-Image (default: loras/z_image)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="compute precision (default: float32 on CPU, bfloat16 on GPU)")
    g.add_argument("--device", help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)")
    return p


def generate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model type (see `python app.py models`); default z_image, or the PNG's")
    p.add_argument("--prompt", help="what to draw")
    p.add_argument("--negative-prompt", help="what to avoid (models with CFG)")
    p.add_argument("--seed", type=int, help="-1 for random (default); the seed used is in the PNG and printed")
    p.add_argument("--steps", type=int, dest="num_inference_steps", help="denoising steps (1-200)")
    p.add_argument("--guidance", type=float, dest="guidance_scale", help="CFG scale, 0 = off (base model: 4)")
    p.add_argument("--cfg-truncation", type=float, help="stop CFG once 1 - sigma passes this (0-1, 1 = never)")
    p.add_argument("--cfg-normalization", type=float, help="cap the guided prediction's norm at k x the positive's")
    p.add_argument("--shift", type=float, dest="flow_shift", help="flow shift of the noise schedule (default 3)")
    p.add_argument("--sampler", help="sampler name (default euler)")
    p.add_argument("--width", type=int, help="multiple of 16, 256-4096")
    p.add_argument("--height", type=int, help="multiple of 16, 256-4096")
    p.add_argument("--aspect", choices=list(size_presets()), help="preset size of this aspect ratio")
    p.add_argument("--megapixels", type=float, choices=[1.0, 2.0], default=1.0, help="size class for --aspect")
    p.add_argument("--batch", type=int, dest="batch_size", help="images per pass (1-16)")
    p.add_argument("--count", type=int, help="runs, with successive seeds (1-100)")
    p.add_argument("--output", default="outputs", metavar="FILE_OR_DIR",
                   help="folder (default outputs/) or a .png name; existing files are never overwritten")
    p.add_argument("--settings-from", metavar="PNG", help="start from the settings stored in a PNG made by this app")
    control_options(p)


def control_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("control (control model types: z_image_control, z_image_control2, z_image_control2_1)")
    g.add_argument("--control-image", metavar="IMAGE", help="picture to follow (turned into a map by --control-mode)")
    g.add_argument("--control-mode", choices=list(CONTROL_MODES),
                   help="pose, canny, depth, gray: made from the picture; raw: the picture is a ready map (HED, "
                        "scribble, MLSD, tile, ...); none: no map, inpaint only (default raw)")
    g.add_argument("--control-weight", type=float, help="strength of control, 0-2 (model default, about 0.75-0.9)")
    g.add_argument("--control-start", type=float, help="fraction of the steps where control starts (default 0)")
    g.add_argument("--control-end", type=float, help="fraction of the steps where control ends (default 1)")
    g.add_argument("--control-fit", choices=list(CONTROL_FITS),
                   help="fit the picture to the output size: crop (default), fit (letterbox), or image (output "
                        "size from the picture's aspect ratio)")
    g.add_argument("--mask", metavar="IMAGE", help="inpaint (2.x): white = repaint, the rest of --control-image kept")
    g.add_argument("--canny-low", type=int, help="canny low threshold (default 100)")
    g.add_argument("--canny-high", type=int, help="canny high threshold (default 200)")
    g.add_argument("--depth-model", choices=list(DEPTH_MODELS), help="Depth Anything V2 size (default small)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="app.py", parents=[common_options()],
                     description="Z-Image text-to-image for home GPUs. Without a command, launches the web UI.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_options(subcommand=True)
    gen = sub.add_parser("generate", parents=[common], help="generate images from the command line")
    generate_options(gen)
    cmap = sub.add_parser("control-map", parents=[common],
                          help="save the control map a control model would follow (pose, canny, depth, ...)")
    generate_options(cmap)
    sub.add_parser("models", parents=[common], help="list model types and whether their files are present")
    show = sub.add_parser("settings", parents=[common], help="print the settings stored in a PNG")
    show.add_argument("png")
    tiny = sub.add_parser("make-test-model", parents=[common],
                          help="write a tiny random-weight model (draws noise) and its model JSON, for offline tries")
    tiny.add_argument("folder")
    from core import ui_options

    ui_options.add(parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            from core import ui_options

            return ui_options.launch(args)
        return {"generate": cmd_generate, "models": cmd_models, "settings": cmd_settings,
                "make-test-model": cmd_make_test_model, "control-map": cmd_control_map}[args.command](args)
    except (SettingsError, ModelDefinitionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130


def make_engine(args):
    from core.engine import Engine
    from core.files import FileLocator
    from core.registry import Registry

    registry = Registry(extra_files=[Path(p) for p in args.model_def])
    locator = FileLocator(Path(args.checkpoints), Path(args.comfyui_models) if args.comfyui_models else None)
    if args.comfyui_models and not Path(args.comfyui_models).is_dir():
        raise UserError(f"--comfyui-models {args.comfyui_models}: no such folder")
    return Engine(registry, locator, args.dtype, args.device)


SETTING_FLAGS = ("prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "cfg_truncation",
                 "cfg_normalization", "flow_shift", "sampler", "width", "height", "batch_size", "count")
CONTROL_FLAGS = ("control_image", "control_mode", "control_weight", "control_start", "control_end", "control_fit",
                 "mask", "canny_low", "canny_high", "depth_model")
PATH_FLAGS = ("control_image", "mask")


def settings_from_args(engine, args):
    """Model defaults < the PNG's settings (--settings-from) < flags given on the command line."""
    overrides = {k: getattr(args, k) for k in SETTING_FLAGS + CONTROL_FLAGS if getattr(args, k) is not None}
    for k in PATH_FLAGS:  # absolute, so the PNG's settings still find the file from another folder
        if overrides.get(k):
            overrides[k] = str(Path(overrides[k]).expanduser().resolve())
    if args.aspect and not (args.width or args.height):
        overrides["width"], overrides["height"] = size_presets(args.megapixels)[args.aspect]
    base = {}
    if args.settings_from:
        from core.outputs import read_png_settings

        png_settings, _ = read_png_settings(args.settings_from)
        base = png_settings.to_dict()
    model_type = args.model or base.get("model_type") or "z_image"
    if base and base["model_type"] != model_type:
        base = {}  # another model's settings: keep only what the user typed
    base.pop("model_type", None)
    return engine.settings_for(model_type, **{**base, **overrides})


def cmd_generate(args) -> int:
    engine = make_engine(args)
    settings = settings_from_args(engine, args)
    if not args.prompt and not args.settings_from:
        raise SettingsError("--prompt is required (or --settings-from a PNG)")
    for note in engine.check(settings):
        print(f"note: {note}", file=sys.stderr)
    results = engine.generate(settings, callback=_progress(settings))
    print(file=sys.stderr)
    for path, result in zip(engine.save(results, Path(args.output)), results):
        print(f"{path}\tseed {result.settings.seed}")
    return 0


def cmd_control_map(args) -> int:
    from core import APP_NAME, APP_VERSION
    from core.outputs import save_png

    engine = make_engine(args)
    if not args.prompt:
        args.prompt = "control map"  # the map does not depend on the prompt
    settings = settings_from_args(engine, args)
    image = engine.control_map(settings)
    output = Path(args.output)
    target = output if output.suffix.lower() == ".png" else output / f"control_map_{settings.control_mode}.png"
    path = save_png(image, settings, {"app": f"{APP_NAME} {APP_VERSION}", "kind": "control map"}, target)
    print(f"{path}\t{settings.control_mode} map, {image.width}x{image.height}")
    return 0


def _progress(settings):
    def report(run, step, total, _latents):
        sys.stderr.write(f"\rimage run {run + 1}/{settings.count}: step {step + 1}/{total}")
        sys.stderr.flush()
    return report


def cmd_models(args) -> int:
    engine = make_engine(args)
    for name in sorted(engine.registry.types):
        model_def = engine.registry.get(name)
        handler = engine.registry.handler(name)
        caps = handler.capabilities(model_def.architecture)
        state = "" if caps.available else "  [generation not available in this version]"
        print(f"{name}: {model_def.name} ({model_def.architecture}){state}")
        try:
            for status in handler.file_status(model_def, engine.locator):
                where = f"present  {status.path}" if status.path else \
                    f"missing  will download {status.source} ({human_size(status.size)})"
                print(f"    {status.component:<13} {where}")
        except UserError as exc:
            print(f"    problem: {exc}")
    return 0


def cmd_settings(args) -> int:
    from core.outputs import read_png_settings

    settings, record = read_png_settings(args.png)
    print(json.dumps({"settings": settings.to_dict(), "record": record}, indent=2, ensure_ascii=False))
    return 0


def cmd_make_test_model(args) -> int:
    from models.z_image.tiny import write_control_test_model, write_test_model

    path = write_test_model(Path(args.folder))
    control = write_control_test_model(Path(args.folder))
    print(f"wrote a tiny random-weight test model (it draws noise, not pictures): {path}")
    print(f"and a tiny control model (Fun-ControlNet-Union 2.1, inpaint): {control}")
    print(f"try: python app.py generate --model-def {path} --model {path.stem} --prompt 'a test'")
    return 0
