"""The LoRA panel: the LoRA folder as cards (the file's preview picture, else a plain tile), a picked LoRA's
trigger words (one click adds them to the prompt) and whether it fits the model (the handler's describe_lora),
the active LoRAs each with a strength slider that works on a phone, and presets. The table of active LoRAs
(the `loras` field, with per-step schedules) stays the one value the rest of the page reads; the sliders edit it.
"""

from __future__ import annotations

import html
import io
from pathlib import Path

import gradio as gr

from app.web.fields import rows_to_loras
from app.web.handlers import reported, user_of
from engine.errors import UserError
from engine.lora.presets import list_presets

PRIVATE = dict(api_visibility="private")
FAST = dict(api_visibility="private", queue=False)  # no model, no GPU: answered at once


class LoraPicker:
    """The panel's handlers ({name: update} out)."""

    def __init__(self, app):
        self.app = app
        self._tile = None

    def library(self, model_type):
        return self.app.engine.lora_library(model_type if model_type in self.app.types else self.app.first)

    def tile(self) -> str:
        """A plain tile for LoRAs without a preview picture (made once, in Gradio's cache)."""
        if self._tile is None or not Path(self._tile).is_file():
            import tempfile

            from PIL import Image

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "lora-no-preview.png"
                Image.new("RGB", (96, 96), (96, 104, 120)).save(path)
                self._tile = self.app.history.served(path)
        return self._tile

    def picture(self, card) -> str:
        """A card's picture as the page may show it: its preview file, its header thumbnail, else the tile."""
        if card.preview is not None:
            return self.app.history.served(card.preview)
        if card.thumbnail:
            import tempfile

            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(io.BytesIO(card.thumbnail)) as im:
                    im.thumbnail((256, 256))
                    with tempfile.TemporaryDirectory() as tmp:
                        path = Path(tmp) / (Path(card.name).stem + ".png")
                        im.convert("RGB").save(path)
                        return self.app.history.served(path)
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
                pass
        return self.tile()

    def cards(self, model_type) -> list:
        """The gallery of the LoRA folder: (picture, name) per file."""
        from engine.lora.cards import card

        lib = self.library(model_type)
        return [(self.picture(card(f, lib.root)), f.name) for f in lib.scan()]

    def describe(self, model_type, name) -> dict:
        """What the picked LoRA is: title, fits the model or not, trigger words."""
        from engine.lora.cards import card

        if not name:
            return {"lora_card": ""}
        try:
            lib = self.library(model_type)
            file = lib.resolve(name)
        except UserError as exc:
            return {"lora_card": f"<p class='zi-error-text'>{html.escape(str(exc))}</p>"}
        c = card(file, lib.root)
        handler = self.app.engine.registry.handler(model_type if model_type in self.app.types else self.app.first)
        fit = handler.describe_lora(file.path)
        ok = not fit.startswith(("not usable", "unreadable"))
        words = ", ".join(html.escape(w) for w in c.triggers) or "none in its metadata"
        return {"lora_card": (f"<div class='zi-lora-card'><strong>{html.escape(c.title)}</strong> "
                              f"<code>{html.escape(c.name)}</code><br>"
                              f"<span class='{'zi-ok' if ok else 'zi-error-text'}'>"
                              f"{'Fits this model' if ok else 'Does not fit this model'}: {html.escape(fit)}</span><br>"
                              f"Trigger words: {words}</div>")}

    def on_refresh_cards(self, model_type, request: gr.Request = None) -> dict:
        """Re-read the LoRA folder (files added since start-up appear) and the presets."""
        with reported():
            self.app.served(model_type)
            names = self.library(model_type).names()
        return {"lora_cards": self.cards(model_type), "lora_pick": gr.update(choices=names, value=None),
                "preset_pick": gr.update(choices=list_presets(self.app.lora_folder(model_type), user_of(request)))}

    def on_card(self, model_type, evt: gr.SelectData) -> dict:
        """A card clicked: it is picked (the name comes back through the library's own check)."""
        value = evt.value if isinstance(evt.value, dict) else {}
        name = value.get("caption")
        try:
            self.library(model_type).resolve(name)
        except UserError:
            return {}
        return {"lora_pick": name, **self.describe(model_type, name)}

    def on_triggers(self, model_type, name, prompt) -> dict:
        """The picked LoRA's trigger words added to the prompt (those not in it already)."""
        from engine.lora.cards import card

        if not name:
            return {}
        try:
            lib = self.library(model_type)
            words = card(lib.resolve(name), lib.root).triggers
        except UserError:
            return {}
        prompt = prompt or ""
        new = [w for w in words if w.lower() not in prompt.lower()]
        if not new:
            gr.Info("Its trigger words are in the prompt already." if words else "This LoRA names no trigger words.")
            return {}
        return {"prompt": ", ".join([p for p in (prompt.strip().rstrip(","), ", ".join(new)) if p])}


def set_row(rows, name, column: int, value) -> list:
    """The table with one LoRA's strength (column 1) or positive-only (column 3) changed."""
    out = []
    for row in rows or []:
        row = list(row) + [""] * (4 - len(row))
        if str(row[0] or "").strip() == name:
            row[column] = value
        out.append(row[:4])
    return out


def build(app, page, fields) -> LoraPicker:
    picker = LoraPicker(app)
    caps = app.caps(app.first)
    with page.add("lora_panel", gr.Accordion("LoRAs: none active", open=False, visible=caps.loras,
                                             elem_id="lora-panel")):
        gr.Markdown("LoRA files live in the LoRA folder (`--lora-dir-z-image`); a picture with the same name next "
                    "to one is its card. Stacking several LoRAs on Turbo often degrades images: lower their "
                    "strengths if it does.")
        page.add("lora_cards", gr.Gallery(picker.cards(app.first), label="LoRA folder (click a card)", columns=4,
                                          height=260, allow_preview=False, object_fit="cover", format="png",
                                          fit_columns=False,
                                          elem_id="lora-cards"))
        with gr.Row(equal_height=True):
            page.add("lora_pick", gr.Dropdown(app.engine.lora_library(app.first).names(), label="Picked LoRA",
                                              info="or type to find one by name", elem_id="lora-pick", scale=3))
            page.add("lora_refresh", gr.Button("Refresh list", size="sm", scale=1, elem_id="lora-refresh"))
        page.add("lora_card", gr.HTML("", elem_id="lora-card"))
        with gr.Row():
            page.add("lora_add", gr.Button("Add to the active LoRAs", size="sm", variant="primary",
                                           elem_id="lora-add"))
            page.add("lora_triggers", gr.Button("Add its trigger words to the prompt", size="sm",
                                                elem_id="lora-triggers"))
        page.add("i2l_offer", gr.Button("Use the recommended settings", visible=False, size="sm",
                                        elem_id="i2l-offer"))
        gr.Markdown("**Active LoRAs**", elem_classes="zi-subhead")
        sliders = gr.Column(elem_id="lora-active")
        with gr.Accordion("Per-step schedules and CFG branch (table)", open=False, elem_id="lora-table-panel"):
            fields("lora")
        with gr.Row():
            page.add("preset_pick", gr.Dropdown(list_presets(app.lora_folder(app.first)), label="Preset"))
            load = gr.Button("Load preset", size="sm")
        with gr.Row():
            name = gr.Textbox(label="Save as preset", placeholder="name")
            snippet = gr.Textbox(label="Prompt snippet stored with it (optional)")
            save = gr.Button("Save preset", size="sm")
    _wire(app, picker, page, sliders, load, save, name, snippet)
    return picker


def _wire(app, picker, page, sliders, load, save, name, snippet) -> None:
    model, loras, pick, prompt = page["model_type"], page["loras"], page["lora_pick"], page["prompt"]
    page["lora_refresh"].click(**page.wire(picker.on_refresh_cards, ["lora_cards", "lora_pick", "preset_pick"]),
                               inputs=model, **PRIVATE)
    page["lora_cards"].select(**page.wire(picker.on_card, ["lora_pick", "lora_card"]), inputs=model, **PRIVATE)
    pick.input(**page.wire(picker.describe, ["lora_card"]), inputs=[model, pick], **PRIVATE)
    page["lora_add"].click(**page.wire(app.on_add_lora, ["loras"]), inputs=[pick, loras, model], **PRIVATE)
    page["lora_triggers"].click(**page.wire(picker.on_triggers, ["prompt"]), inputs=[model, pick, prompt],
                                **PRIVATE)
    load.click(**page.wire(app.on_load_preset, ["loras", "prompt"]), inputs=[model, page["preset_pick"], prompt],
               **PRIVATE)
    save.click(**page.wire(app.on_save_preset, ["preset_pick"]), inputs=[model, name, loras, snippet], **PRIVATE)
    loras.change(**page.wire(app.on_lora_rows, ["lora_panel"]), inputs=loras, **FAST)

    with sliders:
        @gr.render(inputs=loras, triggers=[loras.change])
        def active_loras(rows):
            try:
                items = rows_to_loras(rows)
            except (ValueError, TypeError):
                items = []
            if not items:
                gr.Markdown("None: click a card, then *Add*.", elem_classes="zi-hint")
            for item in items:
                lora = item["name"]
                with gr.Row(elem_classes="zi-lora-row", equal_height=True):
                    strength = gr.Slider(-2, 2, value=item["strength"], step=0.05, label=f"{lora}: strength",
                                         interactive=True, key=f"lora-strength-{lora}", scale=4)
                    positive = gr.Checkbox(bool(item.get("positive_only")), label="CFG positive only",
                                           interactive=True, key=f"lora-positive-{lora}", scale=1)
                    remove = gr.Button("Remove", size="sm", key=f"lora-remove-{lora}", scale=1,
                                       elem_classes="zi-lora-remove")
                strength.change(lambda v, r, n=lora: set_row(r, n, 1, v), [strength, loras], loras, **FAST)
                positive.input(lambda v, r, n=lora: set_row(r, n, 3, bool(v)), [positive, loras], loras, **FAST)
                remove.click(lambda r, n=lora: [x for x in (r or []) if str(x[0] or "").strip() != n], loras, loras,
                             **FAST)
