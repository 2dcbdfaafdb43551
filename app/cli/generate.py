"""`generate`, `enhance`, `control-map` and `settings`: images (or a rewritten prompt, or a control map) from
flags, through the one settings-merge path and the engine's job queue."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from app.cli.options import generate_options
from app.setup import make_engine
from engine.errors import SettingsError
from engine.merge import merge_settings
from engine.settings import size_presets

OWNER = "cli"


def register(sub, common) -> None:
    gen = sub.add_parser("generate", parents=[common], help="generate images from the command line")
    generate_options(gen)
    gen.set_defaults(run=cmd_generate)
    enh = sub.add_parser("enhance", parents=[common], help="print the enhancer's rewrite of --prompt (no image)")
    generate_options(enh)
    enh.set_defaults(run=cmd_enhance)
    cmap = sub.add_parser("control-map", parents=[common],
                          help="save the control map a control model would follow (pose, canny, depth, ...)")
    generate_options(cmap)
    cmap.set_defaults(run=cmd_control_map)
    show = sub.add_parser("settings", parents=[common], help="print the settings stored in a PNG")
    show.add_argument("png")
    show.set_defaults(run=cmd_settings)


SETTING_FLAGS = ("prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "cfg_truncation",
                 "cfg_normalization", "flow_shift", "sampler", "scheduler", "sigma_rescale", "nag_scale", "nag_tau",
                 "nag_alpha", "nag_start", "nag_end", "width", "height", "batch_size", "count", "enhance",
                 "enhance_thinking", "text_hidden_layer", "seed_variance", "seed_variance_fraction",
                 "seed_variance_steps")
CONTROL_FLAGS = ("control_image", "control_mode", "control_weight", "control_start", "control_end", "control_fit",
                 "mask", "canny_low", "canny_high", "depth_model")
IMAGE_FLAGS = ("init_image", "strength", "mask_blur", "mask_grow", "inpaint_area", "inpaint_padding", "outpaint",
               "upscale", "upscaler", "hires_strength", "hires_steps")
PATH_FLAGS = ("control_image", "mask", "init_image")


def settings_from_args(engine, args):
    """The settings the flags ask for: model defaults < the PNG's settings (--settings-from) < flags given."""
    changes = {k: getattr(args, k) for k in SETTING_FLAGS + CONTROL_FLAGS + IMAGE_FLAGS
               if getattr(args, k, None) is not None}
    for k in PATH_FLAGS:  # absolute, so the PNG's settings still find the file from another folder
        if changes.get(k):
            changes[k] = str(Path(changes[k]).expanduser().resolve())
    if args.aspect and not (args.width or args.height):
        changes["width"], changes["height"] = size_presets(args.megapixels)[args.aspect]
    base, record, stores = {}, {}, []
    if args.settings_from:
        from engine.images.inputs import InputStore
        from engine.outputs import read_png_settings

        png_settings, record = read_png_settings(args.settings_from)
        base = png_settings.to_dict()
        stores.append(InputStore(Path(args.settings_from).parent / "inputs"))  # the PNG's own input store
    model_type = args.model or base.get("model_type") or "z_image"
    preset = None
    if args.lora_preset:
        from engine.lora.presets import load_preset

        preset = load_preset(engine.lora_library(model_type).folder, args.lora_preset)
    if args.lora:
        from engine.lora.file_options import with_file_default
        from engine.settings import lora_branch, parse_lora_arg

        library = engine.lora_library(model_type)  # a file may ask for CFG's positive branch only (i2L LoRAs)
        changes["loras"] = [with_file_default(parse_lora_arg(t), library, lora_branch(t)) for t in args.lora]
    merged = merge_settings(engine, model_type, base=base, record=record, preset=preset, changes=changes,
                            input_stores=stores)
    for note in merged.notes:
        print(f"warning: {note}", file=sys.stderr)
    return merged.settings


def run_job(engine, work, kind="generate"):
    """Run `work(ctx)` on the engine's job queue, printing progress; returns its result."""
    result = None
    for event in engine.jobs.run(work, OWNER, kind):
        result = _print_event(event)
    print(file=sys.stderr)
    return result


def _print_event(event):
    from engine.jobs import NoteEvent, StageEvent, StepEvent, TokenEvent

    if isinstance(event, StepEvent):
        sys.stderr.write(f"\rimage run {event.run + 1}: step {event.step + 1}/{event.total}")
    elif isinstance(event, TokenEvent):
        sys.stderr.write(f"\renhancing the prompt: {event.tokens} tokens, {event.per_second:.1f} tokens/s")
    elif isinstance(event, NoteEvent):
        sys.stderr.write(f"\nwarning: {event.message}\n")
    elif not isinstance(event, StageEvent):
        return event
    sys.stderr.flush()
    return None


def cmd_generate(args) -> int:
    engine = make_engine(args)
    settings = settings_from_args(engine, args)
    if not args.prompt and not args.settings_from:
        raise SettingsError("--prompt is required (or --settings-from a PNG)")
    check_output(Path(args.output))  # before the input pictures are stored beside the outputs
    request = engine.prepare(settings)
    for note in list(request.notes) + engine.startup_notes():
        print(f"note: {note}", file=sys.stderr)

    def work(ctx):
        for warning in engine.apply_loras(request):
            ctx.note(warning)
        results = engine.generate(request, ctx.on_step, ctx.on_token)
        ctx.stage("saving")
        return engine.save(results, Path(args.output)), results

    paths, results = run_job(engine, work)
    for note in dict.fromkeys(n for r in results for n in getattr(r, "notes", [])):
        print(f"note: {note}", file=sys.stderr)
    if results and results[0].settings.original_prompt:
        print(f"enhanced prompt: {results[0].settings.prompt}", file=sys.stderr)
    if results and results[0].memory:
        from engine.placement.memory import summary

        print(f"peak memory: {summary(results[0].memory)}", file=sys.stderr)
    for path, result in zip(paths, results):
        print(f"{path}\tseed {result.settings.seed}")
    return 0


def check_output(output: Path) -> None:
    """Before any work: the output folder (or the .png's folder) can be created and written."""
    import os

    from engine.errors import UserError

    folder = output.parent if output.suffix.lower() == ".png" else output
    existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if existing is not None and (not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK)):
        raise UserError(f"--output {output}: {existing} is not a folder this app can write to")


def cmd_control_map(args) -> int:
    from engine import APP_NAME, APP_VERSION
    from engine.outputs import save_png

    engine = make_engine(args)
    if not args.prompt:
        args.prompt = "control map"  # the map does not depend on the prompt
    output = Path(args.output)
    check_output(output)  # before the control picture is stored beside the outputs
    request = engine.prepare(settings_from_args(engine, args))
    settings = request.settings
    image = run_job(engine, lambda ctx: engine.control_map(request), "control map")
    target = output if output.suffix.lower() == ".png" else output / f"control_map_{settings.control_mode}.png"
    path = save_png(image, settings, {"app": f"{APP_NAME} {APP_VERSION}", "kind": "control map"}, target)
    print(f"{path}\t{settings.control_mode} map, {image.width}x{image.height}")
    return 0


def cmd_enhance(args) -> int:
    engine = make_engine(args)
    request = engine.prepare(settings_from_args(engine, args))
    enhanced = run_job(engine, lambda ctx: engine.enhance(request, ctx.on_token), "enhance")
    print(enhanced.prompt)
    return 0


def cmd_settings(args) -> int:
    from engine.outputs import read_png_settings

    settings, record = read_png_settings(args.png)
    print(json.dumps({"settings": settings.to_dict(), "record": record}, indent=2, ensure_ascii=False))
    return 0
