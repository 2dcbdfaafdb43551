"""The README stays true to the command line: every command and every flag the parser knows is documented."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli import build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def commands_and_flags(parser) -> tuple[set[str], set[str]]:
    commands, flags = set(), set()
    for action in parser._actions:
        flags.update(o for o in action.option_strings if o.startswith("--") and o != "--help")
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                commands.add(name)
                more_commands, more_flags = commands_and_flags(sub)
                commands |= more_commands
                flags |= more_flags
    return commands, flags


def test_every_command_and_flag_is_in_the_readme():
    commands, flags = commands_and_flags(build_parser())
    assert len(commands) > 8 and len(flags) > 80  # the walk reached the subcommands
    assert sorted(c for c in commands if f"app.py {c}" not in README) == []
    assert sorted(f for f in flags if f"`{f}" not in README and f"{f} " not in README) == []
