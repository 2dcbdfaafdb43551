"""Command line: `python app.py COMMAND`; without a command it serves the web page (app.web.launch).

Each command lives in a module that registers its sub-parser; they share app.cli.options' flags."""

from __future__ import annotations

import sys

from app.cli import generate, image_to_lora, loras, models, serve, train, upscale
from app.cli.options import Parser, common_options
from app.web import launch
from engine.errors import ModelDefinitionError, SettingsError, UserError

COMMANDS = (generate, loras, models, upscale, image_to_lora, train, serve)


def build_parser() -> Parser:
    parser = Parser(prog="app.py", parents=[common_options()],
                    description="Z-Image text-to-image for home GPUs. Without a command, launches the web UI.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_options(subcommand=True)
    for module in COMMANDS:
        module.register(sub, common)
    launch.add(parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            return launch.launch(args)
        return args.run(args)
    except (SettingsError, ModelDefinitionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
