"""`loras`: the LoRA folder (each file and how it fits the model) and presets; save a preset."""

from __future__ import annotations

from app.cli.options import lora_options
from app.setup import make_engine
from engine.errors import SettingsError
from engine.weights.files import human_size


def register(sub, common) -> None:
    loras = sub.add_parser("loras", parents=[common], help="list the LoRA folder and presets; save a preset")
    lora_options(loras)
    loras.add_argument("--save-preset", metavar="PRESET", help="save the --lora/--lora-preset set under this name")
    loras.add_argument("--preset-prompt", default="", metavar="TEXT", help="prompt snippet stored with the preset")
    loras.add_argument("--overwrite", action="store_true", help="replace a preset of the same name")
    loras.set_defaults(run=cmd_loras)


def cmd_loras(args) -> int:
    """List the LoRA folder (with how each file fits Z-Image) and presets, or save a preset."""
    from engine.lora import presets
    from engine.merge import merge_settings
    from engine.settings import parse_lora_arg

    engine = make_engine(args)
    model_type = "z_image"
    library = engine.lora_library(model_type)
    if args.save_preset:
        preset = presets.load_preset(library.folder, args.lora_preset) if args.lora_preset else None
        changes = {"prompt": "", "loras": [parse_lora_arg(text) for text in args.lora or []]}
        loras = merge_settings(engine, model_type, preset=preset, changes=changes).settings.loras
        if not loras:
            raise SettingsError("--save-preset needs the LoRAs to save: give --lora NAME:STRENGTH (repeatable)")
        library.resolve_all(loras)
        snippet = args.preset_prompt or (preset or {}).get("prompt", "")
        path = presets.save_preset(library.folder, args.save_preset, loras, snippet, overwrite=args.overwrite)
        print(f"saved preset {args.save_preset}: {path}")
        return 0
    handler = engine.registry.handler(model_type)
    files = library.scan()
    print(f"LoRA folder {library.folder}: {len(files)} file(s)")
    from engine.lora.file_options import read_options

    for f in files:
        made_for = ("; CFG positive branch only by default (made from pictures)"
                    if read_options(f.path).positive_only else "")
        print(f"  {f.name}\t{human_size(f.size)}\t{handler.describe_lora(f.path)}{made_for}")
    names = presets.list_presets(library.folder)
    if names:
        print(f"presets: {', '.join(names)}")
    return 0
