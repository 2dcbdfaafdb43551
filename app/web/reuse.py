"""A result as others reuse it: a link that opens its PNG, and the command line that makes it again."""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

from engine.errors import UserError


def png_link(path: str) -> str:
    """A link that opens the PNG (the cache copy Gradio serves) in a new tab."""
    name = html.escape(Path(path).name)
    return (f'<a class="zi-open" href="gradio_api/file={quote(str(path))}" target="_blank" rel="noopener">'
            f"Open the PNG ({name})</a>")


def command_line(app, settings) -> str:
    """The command that makes this image again (app.cli.command_line), with the running app's file flags."""
    if settings is None:
        return ""
    from app.cli.command_line import command_for, command_text
    from engine.registry import ROOT

    registry = app.engine.registry
    try:
        model_def = registry.get(settings.model_type)
        defaults = registry.default_settings(settings.model_type)
    except UserError:
        return command_text(command_for(settings, common=app.cli_flags))
    shipped = [ROOT / "defaults", ROOT / "finetunes"]
    extra = [s for s in model_def.sources if not any(Path(s).resolve().is_relative_to(f) for f in shipped)]
    return command_text(command_for(settings, defaults, extra, app.cli_flags,
                                    lambda name: app.file_options(settings.model_type, name).positive_only))
