"""Command line: `generate`, `models`, `settings`, `make-test-model`; no sub-command launches the UI."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.errors import ModelDefinitionError, SettingsError, UserError
from engine.weights.files import human_size
from engine.settings import CONTROL_FITS, CONTROL_MODES, DEPTH_MODELS, size_presets


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
    g.add_argument("--text-encoder", metavar="FILE_OR_DIR",
                   help="use this Qwen3-4B-shaped text encoder (file or folder) instead of the model type's")
    g.add_argument("--vae", metavar="FILE_OR_DIR", help="use this Flux-style 16-channel VAE instead of the model type's")
    g.add_argument("--finetunes", metavar="DIR", help="your model JSONs; `quantize` adds its files here "
                                                      "(default: finetunes/)")
    memory_options(p)
    return p


def memory_options(p: argparse.ArgumentParser) -> None:
    """Which files (INT8 or bf16) are loaded, and how the GPU's memory is managed."""
    from engine.load_options import ATTENTION_CHOICES, PROFILE_CHOICES, QUANTIZATION_CHOICES

    g = p.add_argument_group("memory and precision")
    g.add_argument("--transformer-quantization", choices=QUANTIZATION_CHOICES,
                   help="which of the model's transformer files: int8 (half the memory), bf16, or auto (default: "
                        "the first one on disk, else the first listed)")
    g.add_argument("--text-encoder-quantization", choices=QUANTIZATION_CHOICES,
                   help="the same choice for the Qwen3 text encoder")
    g.add_argument("--profile", type=int, choices=PROFILE_CHOICES,
                   help="mmgp memory profile on CUDA, 1 (64 GB RAM, 24 GB VRAM: fastest) to 5 (24 GB RAM, 10 GB "
                        "VRAM: slowest); 0 = none, all on the GPU (default: suggested for this machine)")
    g.add_argument("--preload", type=int, dest="preload_mb", metavar="MB",
                   help="MB of the transformer kept in VRAM with profiles 2, 4, 5 (default: the profile's)")
    g.add_argument("--compile", action="store_true", help="torch.compile the transformer's blocks (CUDA profiles)")
    g.add_argument("--attention", choices=ATTENTION_CHOICES, help="attention kernel (default sdpa; flash and sage "
                                                                  "need their packages and CUDA)")
    g.add_argument("--vram-safety-coefficient", type=float, metavar="X",
                   help="share of VRAM a profile may fill with weights, 0-1 (default 0.8)")


def generate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model type (see `python app.py models`); default z_image, or the PNG's")
    p.add_argument("--prompt", help="what to draw")
    p.add_argument("--negative-prompt", help="what to avoid (CFG on the base model, NAG on distilled ones)")
    p.add_argument("--seed", type=int, help="-1 for random (default); the seed used is in the PNG and printed")
    p.add_argument("--steps", type=int, dest="num_inference_steps", help="denoising steps (1-200)")
    p.add_argument("--guidance", type=float, dest="guidance_scale", help="CFG scale, 0 = off (base model: 4)")
    p.add_argument("--cfg-truncation", type=float, help="stop CFG once 1 - sigma passes this (0-1, 1 = never)")
    p.add_argument("--cfg-normalization", type=float, help="cap the guided prediction's norm at k x the positive's")
    p.add_argument("--shift", type=float, dest="flow_shift", help="flow shift of the noise schedule (default 3)")
    p.add_argument("--sampler", help="euler (default), euler_ancestral, heun, ralston, dpmpp_2m (heun and ralston "
                                     "cost two passes per step); twinflow for TwinFlow")
    p.add_argument("--scheduler", help="sigma schedule: simple (default), beta, sgm_uniform")
    p.add_argument("--sigma-rescale", type=float, help="multiply all sigmas by this (0.5-1, 1 = off)")
    g = p.add_argument_group("NAG: negative prompts without CFG (Turbo, TwinFlow, control types)")
    g.add_argument("--nag-scale", type=float, help="1 = off; defaults from the model type (Turbo 3)")
    g.add_argument("--nag-tau", type=float, help="cap on the guided/positive L1 ratio per token (default 2.5)")
    g.add_argument("--nag-alpha", type=float, help="blend of guided and positive attention, 0-1 (default 0.25)")
    g.add_argument("--nag-start", type=float, help="first step with NAG, as a fraction of the steps (default 0)")
    g.add_argument("--nag-end", type=float, help="NAG stops at this fraction of the steps (default 0.75)")
    p.add_argument("--width", type=int, help="multiple of 16, 256-4096")
    p.add_argument("--height", type=int, help="multiple of 16, 256-4096")
    p.add_argument("--aspect", choices=list(size_presets()), help="preset size of this aspect ratio")
    p.add_argument("--megapixels", type=float, choices=[1.0, 2.0], default=1.0, help="size class for --aspect")
    p.add_argument("--batch", type=int, dest="batch_size", help="images per pass (1-16)")
    p.add_argument("--count", type=int, help="runs, with successive seeds (1-100)")
    p.add_argument("--output", default="outputs", metavar="FILE_OR_DIR",
                   help="folder (default outputs/) or a .png name; existing files are never overwritten")
    p.add_argument("--settings-from", metavar="PNG", help="start from the settings stored in a PNG made by this app")
    p.add_argument("--enhance", action="store_true", default=None,
                   help="let the text encoder rewrite the prompt into a detailed one first (seeded)")
    p.add_argument("--enhance-thinking", action="store_true", default=None, help="let the enhancer think first")
    p.add_argument("--text-hidden-layer", type=int, help="text encoder hidden state used (default -2)")
    p.add_argument("--seed-variance", type=float, help="noise on the prompt embedding early on, x its std "
                                                       "(0 = off; try 0.5-2 for more varied Turbo seeds)")
    p.add_argument("--seed-variance-fraction", type=float, help="share of embedding values given noise (0-1)")
    p.add_argument("--seed-variance-steps", type=float, help="share of the steps with the noise (0-1)")
    lora_options(p)
    control_options(p)


def lora_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="append", metavar="NAME[:STRENGTH]",
                   help="a LoRA from the LoRA folder (path inside it), strength -2..2 (default 1); "
                        "NAME:1.0,0.5 spreads per-step strengths over the steps; repeatable")
    p.add_argument("--lora-preset", metavar="PRESET", help="the LoRAs (and prompt snippet) of a saved preset")


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
    enh = sub.add_parser("enhance", parents=[common], help="print the enhancer's rewrite of --prompt (no image)")
    generate_options(enh)
    cmap = sub.add_parser("control-map", parents=[common],
                          help="save the control map a control model would follow (pose, canny, depth, ...)")
    generate_options(cmap)
    sub.add_parser("models", parents=[common], help="list model types and whether their files are present")
    loras = sub.add_parser("loras", parents=[common], help="list the LoRA folder and presets; save a preset")
    lora_options(loras)
    loras.add_argument("--save-preset", metavar="PRESET", help="save the --lora/--lora-preset set under this name")
    loras.add_argument("--preset-prompt", default="", metavar="TEXT", help="prompt snippet stored with the preset")
    loras.add_argument("--overwrite", action="store_true", help="replace a preset of the same name")
    show = sub.add_parser("settings", parents=[common], help="print the settings stored in a PNG")
    show.add_argument("png")
    tiny = sub.add_parser("make-test-model", parents=[common],
                          help="write a tiny random-weight model (draws noise) and its model JSON, for offline tries")
    tiny.add_argument("folder")
    quant = sub.add_parser("quantize", parents=[common],
                           help="write INT8 copies of a model type's bf16 files (the format Wan2GP reads and writes)")
    quant.add_argument("--model", required=True, help="model type whose files to quantize")
    quant.add_argument("--component", choices=["all", "transformer", "text_encoder"], default="all")
    quant.add_argument("--output", metavar="DIR", help="folder for the INT8 files (default: --checkpoints)")
    from app.web import launch as ui_options

    ui_options.add(parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            from app.web import launch as ui_options

            return ui_options.launch(args)
        return {"generate": cmd_generate, "enhance": cmd_enhance, "models": cmd_models, "settings": cmd_settings,
                "loras": cmd_loras, "make-test-model": cmd_make_test_model, "quantize": cmd_quantize,
                "control-map": cmd_control_map}[args.command](args)
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
    from engine.engine import Engine
    from engine.weights.files import FileLocator
    from engine.registry import ROOT, Registry

    folders = (ROOT / "defaults", Path(args.finetunes) if args.finetunes else ROOT / "finetunes")
    registry = Registry(folders, extra_files=[Path(p) for p in args.model_def])
    locator = FileLocator(Path(args.checkpoints), Path(args.comfyui_models) if args.comfyui_models else None)
    if args.comfyui_models and not Path(args.comfyui_models).is_dir():
        raise UserError(f"--comfyui-models {args.comfyui_models}: no such folder")
    overrides = {}
    for flag, field in (("text_encoder", "text_encoder_URLs"), ("vae", "vae_URLs")):
        path = getattr(args, flag, None)
        if path:
            if not Path(path).exists():
                raise UserError(f"--{flag.replace('_', '-')} {path}: no such file or folder")
            overrides[field] = str(Path(path).resolve())
    lora_dirs = {h.family: h.lora_dir(args) for h in set(registry.handlers.values())}
    return Engine(registry, locator, args.dtype, args.device, load_options_from_args(args), overrides, lora_dirs)


def load_options_from_args(args):
    from engine.load_options import LoadOptions

    given = {name: getattr(args, name, None) for name in (
        "transformer_quantization", "text_encoder_quantization", "profile", "preload_mb", "compile", "attention",
        "vram_safety_coefficient")}
    return LoadOptions(**{k: v for k, v in given.items() if v is not None and v is not False}).validate()


SETTING_FLAGS = ("prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "cfg_truncation",
                 "cfg_normalization", "flow_shift", "sampler", "scheduler", "sigma_rescale", "nag_scale", "nag_tau",
                 "nag_alpha", "nag_start", "nag_end", "width", "height", "batch_size", "count", "enhance",
                 "enhance_thinking", "text_hidden_layer", "seed_variance", "seed_variance_fraction",
                 "seed_variance_steps")
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
    base, record = {}, {}
    if args.settings_from:
        from engine.outputs import read_png_settings

        png_settings, record = read_png_settings(args.settings_from)
        base = png_settings.to_dict()
    model_type = args.model or base.get("model_type") or "z_image"
    if base and base["model_type"] != model_type:
        base = {}  # another model's settings: keep only what the user typed
    base.pop("model_type", None)
    library = engine.lora_library(model_type)
    loras, snippet = loras_from_args(args, library.folder)
    if loras is not None:
        overrides["loras"] = loras
    elif base.get("loras"):
        base["loras"], notes = library.restore(base["loras"], record.get("loras") or [])
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
    if snippet:
        from engine.lora.presets import with_snippet

        overrides["prompt"] = with_snippet(overrides.get("prompt", base.get("prompt", "")), snippet)
    return engine.settings_for(model_type, **{**base, **overrides})


def loras_from_args(args, lora_folder) -> tuple[list | None, str]:
    """(--lora-preset's entries, then --lora's (which win by name); None when neither is given), snippet."""
    from engine.settings import normalize_loras, parse_lora_arg

    if not args.lora and not args.lora_preset:
        return None, ""
    items, snippet = {}, ""
    if args.lora_preset:
        from engine.lora.presets import load_preset

        preset = load_preset(lora_folder, args.lora_preset)
        items = {x["name"]: x for x in preset["loras"]}
        snippet = preset["prompt"]
    for text in args.lora or []:
        item = parse_lora_arg(text)
        items[item["name"]] = item
    return normalize_loras(list(items.values())), snippet


def cmd_generate(args) -> int:
    engine = make_engine(args)
    settings = settings_from_args(engine, args)
    if not args.prompt and not args.settings_from:
        raise SettingsError("--prompt is required (or --settings-from a PNG)")
    for note in engine.check(settings) + engine.startup_notes():
        print(f"note: {note}", file=sys.stderr)
    for warning in engine.apply_loras(settings):
        print(f"warning: {warning}", file=sys.stderr)
    results = engine.generate(settings, callback=_progress(settings), on_token=_token_progress)
    print(file=sys.stderr)
    if results and results[0].settings.original_prompt:
        print(f"enhanced prompt: {results[0].settings.prompt}", file=sys.stderr)
    if results and results[0].memory:
        from engine.placement.memory import summary

        print(f"peak memory: {summary(results[0].memory)}", file=sys.stderr)
    for path, result in zip(engine.save(results, Path(args.output)), results):
        print(f"{path}\tseed {result.settings.seed}")
    return 0


def cmd_control_map(args) -> int:
    from engine import APP_NAME
    from engine import APP_VERSION
    from engine.outputs import save_png

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


def _token_progress(n, per_second):
    sys.stderr.write(f"\renhancing the prompt: {n} tokens, {per_second:.1f} tokens/s")
    sys.stderr.flush()


def cmd_enhance(args) -> int:
    engine = make_engine(args)
    settings = settings_from_args(engine, args)
    engine.check(settings)
    enhanced = engine.enhance(settings, on_token=_token_progress)
    print(file=sys.stderr)
    print(enhanced.prompt)
    return 0


def cmd_models(args) -> int:
    engine = make_engine(args)
    for name in sorted(engine.registry.types):
        model_def = engine.registry.get(name)
        handler = engine.registry.handler(name)
        caps = handler.capabilities(model_def.architecture)
        state = "" if caps.available else "  [generation not available in this version]"
        print(f"{name}: {model_def.name} ({model_def.architecture}){state}")
        try:
            for status in handler.file_status(model_def, engine.locator, engine.options):
                where = f"present  {status.path}" if status.path else \
                    f"missing  will download {status.source} ({human_size(status.size)})"
                print(f"    {status.component:<13} {where}" + (f"  [{status.kind}]" if status.kind else ""))
            choices = handler.quantization_choices(model_def, engine.locator)
            if any(len(kinds) > 1 for kinds in choices.values()):
                print("    alternatives: " + ", ".join(f"{c} {'/'.join(k)}" for c, k in choices.items()))
        except UserError as exc:
            print(f"    problem: {exc}")
    return 0


def cmd_loras(args) -> int:
    """List the LoRA folder (with how each file fits Z-Image) and presets, or save a preset."""
    from engine.lora import presets

    engine = make_engine(args)
    model_type = "z_image"
    library = engine.lora_library(model_type)
    if args.save_preset:
        loras, snippet = loras_from_args(args, library.folder)
        if not loras:
            raise SettingsError("--save-preset needs the LoRAs to save: give --lora NAME:STRENGTH (repeatable)")
        library.resolve_all(loras)
        path = presets.save_preset(library.folder, args.save_preset, loras, args.preset_prompt or snippet,
                                   overwrite=args.overwrite)
        print(f"saved preset {args.save_preset}: {path}")
        return 0
    handler = engine.registry.handler(model_type)
    files = library.scan()
    print(f"LoRA folder {library.folder}: {len(files)} file(s)")
    for f in files:
        print(f"  {f.name}\t{human_size(f.size)}\t{handler.describe_lora(f.path)}")
    names = presets.list_presets(library.folder)
    if names:
        print(f"presets: {', '.join(names)}")
    return 0


def cmd_settings(args) -> int:
    from engine.outputs import read_png_settings

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


def cmd_quantize(args) -> int:
    from engine.finetunes import add_alternative, shadowed_by

    engine = make_engine(args)
    model_def = engine.registry.get(args.model)
    handler = engine.registry.handler(args.model)
    components = ["transformer", "text_encoder"] if args.component == "all" else [args.component]
    folder = Path(args.output) if args.output else engine.locator.checkpoints
    for done in handler.quantize(model_def, engine.locator, components, folder):
        verb = "wrote" if done.written else "kept the existing"
        print(f"{done.component}: {verb} {done.path} ({human_size(done.path.stat().st_size)})")
        listed_in = add_alternative(engine.registry.user_folder, model_def, done.field, done.path, engine.locator,
                                    done.source)
        if listed_in:
            print(f"    added to {listed_in} as an alternative in \"{done.field}\"")
            shadow = shadowed_by(model_def, engine.registry.folders)
            if shadow:
                print(f"note: {shadow} (--model-def) overrides that: add {done.path} to its \"{done.field}\" list",
                      file=sys.stderr)
    print(f"use them: python app.py generate --model {args.model} --transformer-quantization int8 "
          "--text-encoder-quantization int8 --prompt ...")
    return 0
