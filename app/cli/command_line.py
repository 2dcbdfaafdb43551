"""The command line that reproduces an image: `python app.py generate ...` built from its settings.

Flags are found from the `generate` parser itself (a settings field's flag is the option whose destination is
the field), so the command follows the parser. Fields equal to the model type's defaults are left out; the
prompt, seed, steps and size are always given. A command with `--model-def`/`--checkpoints`... flags of the
running app (`common_flags`) finds the same files."""

from __future__ import annotations

import shlex
from functools import lru_cache

from engine.settings import GenerationSettings

ALWAYS = ("prompt", "seed", "num_inference_steps", "width", "height")
# flags of the running app that a command needs to find the same files and run the same way
COMMON = ("checkpoints", "comfyui_models", "lora_dir_z_image", "upscaler_dir", "finetunes", "dtype", "device",
          "text_encoder", "vae", "transformer_quantization", "text_encoder_quantization")


@lru_cache(maxsize=1)
def _flags() -> dict[str, tuple[str, bool]]:
    """settings field -> (its long option, is a store_true switch), from the generate parser."""
    import argparse

    from app.cli import generate as command
    from app.cli.generate import CONTROL_FLAGS, IMAGE_FLAGS, SETTING_FLAGS
    from app.cli.options import Parser, common_options

    # the generate command registered on its own (the whole CLI would import the page, which imports this)
    sub = Parser().add_subparsers()
    command.register(sub, common_options(subcommand=True))
    generate = sub.choices["generate"]
    wanted = set(SETTING_FLAGS + CONTROL_FLAGS + IMAGE_FLAGS)
    out = {}
    for action in generate._actions:
        if action.dest in wanted and action.option_strings:
            option = max(action.option_strings, key=len)  # the long name (--upscale over --hires)
            out[action.dest] = (option, isinstance(action, argparse._StoreTrueAction))
    return out


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return str(value)


def _flag(option: str, value: str) -> list[str]:
    # a value starting with "-" (a negative number, a prompt) is glued to its flag so argparse takes it as a value
    return [f"{option}={value}"] if value.startswith("-") else [option, value]


def lora_arg(item: dict, positive_default: bool = False) -> str:
    """The --lora value of a settings' LoRA entry: NAME:STRENGTH or NAME:M1,M2,... (a schedule, with the
    strength folded into it), then :positive or :both when it differs from what the file chooses."""
    schedule = item.get("schedule")
    if schedule:
        text = f"{item['name']}:{','.join(_text(float(item['strength']) * float(m)) for m in schedule)}"
    else:
        text = f"{item['name']}:{_text(float(item['strength']))}"
    positive = bool(item.get("positive_only"))
    if positive != positive_default:
        text += ":positive" if positive else ":both"
    return text


def command_for(settings: GenerationSettings, defaults: GenerationSettings | None = None,
                model_defs=(), common=(), positive_default=None) -> list[str]:
    """argv of `python app.py generate` reproducing `settings`. `defaults`: the model type's (fields equal to
    them are left out); `model_defs`: model JSON files the type needs (--model-def); `common`: the running app's
    file and device flags (common_flags); `positive_default(name)`: whether a LoRA file asks for CFG's
    positive branch by default."""
    argv = ["python", "app.py", *common, "generate"]
    for path in model_defs:
        argv += ["--model-def", str(path)]
    argv += ["--model", settings.model_type]
    for field, (option, switch) in _flags().items():
        value = getattr(settings, field)
        if field == "enhance":
            value = value and not settings.original_prompt  # the prompt given is already the enhanced one
        if field not in ALWAYS and defaults is not None and value == getattr(defaults, field):
            continue
        if switch:
            argv += [option] if value else []
        elif field == "outpaint":
            argv += _flag(option, _text(value)) if any(value) else []
        elif value not in ("", None):
            argv += _flag(option, _text(value))
    for item in settings.loras:
        default = bool(positive_default(item["name"])) if positive_default else False
        argv += _flag("--lora", lora_arg(item, default))
    return argv


def command_text(argv: list[str]) -> str:
    return shlex.join(argv)


def common_flags(args) -> list[str]:
    """The running app's flags (from its parsed arguments) that a reproducing command needs too."""
    out = []
    for dest in COMMON:
        value = getattr(args, dest, None)
        if value:
            out += _flag(f"--{dest.replace('_', '-')}", str(value))
    return out
