"""One-click reuse of a result (this browser's gallery, or the History tab): use its settings, reuse its seed or
go back to a random one, send it to img2img / inpaint / upscale / control (whichever the served types offer),
open its PNG, copy the command line that makes it again.

The picture is a Gradio cache copy the gallery click named (checked by handlers.cached_path); its settings are
read from the PNG itself. Built twice (the Generate tab's results and the History tab's), each with its own
component and handler names."""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr

from app.web import status
from app.web.updates import merged
from engine.errors import UserError

PRIVATE = dict(api_visibility="private")
GPU = dict(concurrency_id="gpu", concurrency_limit=1)


def named(fn, name: str):
    """`fn` under another name: each page event has a name of its own (tests and tools address events by it)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    wrapper.__name__ = wrapper.__qualname__ = name
    return wrapper


class ResultActions:
    """The handlers behind the buttons ({name: update} out); `status` is the status area they report to."""

    def __init__(self, app, status_name: str = "info"):
        self.app = app
        self.status = status_name

    def _path(self, path) -> str:
        from app.web.images_panel import _result_path

        return _result_path(self.app, path)

    def _settings(self, path):
        from engine.outputs import read_png_settings

        return read_png_settings(self._path(path))[0]

    def _failed(self, exc) -> dict:
        return {self.status: status.error(getattr(exc, "message", None) or str(exc), status.details("result action"))}

    def use_settings(self, path) -> dict:
        try:
            return {**self.app.restore(self._path(path)), "tabs": gr.Tabs(selected="generate")}
        except gr.Error as exc:
            return self._failed(exc)

    def reuse_seed(self, path) -> dict:
        try:
            seed = self._settings(path).seed
        except (gr.Error, UserError) as exc:
            return self._failed(exc)
        return {"seed": seed, "info": status.finished(f"Seed {seed} in the seed box: Generate makes it again with "
                                                      "your other settings."), "tabs": gr.Tabs(selected="generate")}

    def random_seed(self) -> dict:
        return {"seed": -1, "info": status.finished("Seed -1: each Generate picks a new random seed."),
                "tabs": gr.Tabs(selected="generate")}

    def use_as_input(self, path) -> dict:
        from app.web.images_panel import use_as_input

        try:
            return {**use_as_input(self.app, path), "tabs": gr.Tabs(selected="generate")}
        except gr.Error as exc:
            return self._failed(exc)

    def inpaint(self, path) -> dict:
        from app.web.images_panel import inpaint

        try:
            return {**inpaint(self.app, path), "tabs": gr.Tabs(selected="generate")}
        except gr.Error as exc:
            return self._failed(exc)

    def use_as_control(self, path, model_type, prompt, store) -> dict:
        """The picture as the control picture; a type without control switches to the first control type."""

        app = self.app
        try:
            path = self._path(path)
        except gr.Error as exc:
            return self._failed(exc)
        target = model_type if model_type in app.types and app.caps(model_type).control_modes else control_type(app)
        if target is None:
            return self._failed(UserError("no model type served here takes a control picture"))
        view = {}
        if target != model_type:
            view = {"model_type": gr.update(value=target), **app.type_view(target, app.settings_for_type(
                target, prompt or "", store))}
        return merged(view, {"control_image": gr.update(value=path, visible=True),
                             "control_panel": gr.update(visible=True, open=True),
                             "info": status.finished(f"{Path(path).name} is the control picture"
                                                     + (f" of {app.engine.registry.get(target).name}."
                                                        if target != model_type else ".")),
                             "tabs": gr.Tabs(selected="generate")})


def control_type(app) -> str | None:
    """The first served type that takes a control picture (None when none does)."""
    return next((t for t in app.types if app.caps(t).control_modes), None)


def build(app, page, prefix: str, selected: str, status_name: str) -> ResultActions:
    """The buttons of one result area, named `{prefix}_...`; wire() connects them once the fields exist."""
    actions = ResultActions(app, status_name)
    with gr.Row(elem_classes="zi-actions"):
        page.add(f"{prefix}_use", gr.Button("Use these settings", size="sm", variant="primary",
                                            elem_id=f"{prefix}-use-settings"))
        page.add(f"{prefix}_seed", gr.Button("Reuse seed", size="sm", elem_id=f"{prefix}-reuse-seed"))
        page.add(f"{prefix}_random", gr.Button("Random seed", size="sm", elem_id=f"{prefix}-random-seed"))
        page.add(f"{prefix}_img2img", gr.Button("To img2img", size="sm", elem_id=f"{prefix}-img2img"))
        page.add(f"{prefix}_inpaint", gr.Button("To inpaint", size="sm", elem_id=f"{prefix}-inpaint"))
        page.add(f"{prefix}_upscale", gr.Button("Upscale", size="sm", elem_id=f"{prefix}-upscale"))
        page.add(f"{prefix}_control", gr.Button("To control", size="sm", elem_id=f"{prefix}-control",
                                                visible=control_type(app) is not None))
    with gr.Row(elem_classes="zi-actions"):
        page.add(f"{prefix}_link", gr.HTML("", elem_id=f"{prefix}-link"))
    # editable (and so labelled for screen readers): a starting point to copy and change
    page.add(f"{prefix}_command", gr.Textbox(label="Command line that makes this image again", buttons=["copy"],
                                             interactive=True, elem_id=f"{prefix}-command", lines=2))
    actions.names = dict(selected=selected, prefix=prefix)
    return actions


def wire(app, page, actions: ResultActions, restore_names: list[str], type_names: list[str], inputs, value_names):
    """Connect one result area's buttons (after every field exists)."""
    prefix, selected = actions.names["prefix"], page[actions.names["selected"]]
    st, tabs = actions.status, ["tabs"]

    def w(fn, name, names):
        return page.wire(named(fn, f"{prefix}_{name}"), names)

    both = list(dict.fromkeys([st, "info"]))  # errors to this area's status, what was done to the Generate tab's
    page[f"{prefix}_use"].click(**w(actions.use_settings, "use_settings", list(dict.fromkeys(
        [*restore_names, *both, *tabs]))), inputs=selected, **PRIVATE)
    page[f"{prefix}_seed"].click(**w(actions.reuse_seed, "reuse_seed", ["seed", *both, *tabs]), inputs=selected,
                                 **PRIVATE)
    page[f"{prefix}_random"].click(**w(actions.random_seed, "random_seed", ["seed", "info", *tabs]), **PRIVATE)
    page[f"{prefix}_img2img"].click(**w(actions.use_as_input, "use_as_input",
                                        ["init_image", "images_panel", *both, *tabs]), inputs=selected, **PRIVATE)
    page[f"{prefix}_inpaint"].click(**w(actions.inpaint, "inpaint",
                                        ["init_image", "mask_paint", "strength", "images_panel", *both, *tabs]),
                                    inputs=selected, **PRIVATE)
    control_names = list(dict.fromkeys(["model_type", *type_names, "control_image", "control_panel", *both, *tabs]))
    page[f"{prefix}_control"].click(**w(actions.use_as_control, "use_as_control", control_names),
                                    inputs=[selected, page["model_type"], page["prompt"], page["memory"]], **PRIVATE)
    model, history = page["model_type"], page["history"]

    def upscale(data: dict, request: gr.Request):
        from app.web.images_panel import upscale_result

        return page.outputs(upscale_result(app, data[selected], data[model], page.values(data, value_names), request,
                                           data[history], st))

    upscale.__name__ = f"{prefix}_upscale"
    page[f"{prefix}_upscale"].click(upscale, {*inputs, selected, history},
                                    [page[n] for n in dict.fromkeys(["gallery", "history", *both, "tabs"])],
                                    **GPU, **PRIVATE)
