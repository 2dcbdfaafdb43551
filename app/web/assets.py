"""The page's look and keyboard: a theme whose text keeps at least 4.5:1 contrast (WCAG AA), visible focus rings,
the sticky status area, and a little script: Ctrl+Enter generates from anywhere, a PNG dropped anywhere on the
page restores its settings, the model list shows each type's id as a tooltip.

`StudioBlocks` is gr.Blocks whose launch() brings these along (Gradio 6 takes theme, css and head at launch),
however the page is launched (app.web.launch, tests, benchmarks)."""

from __future__ import annotations

import gradio as gr


def theme():
    """Gradio's default theme with darker hint, label and placeholder text and a darker primary button, so every
    text meets 4.5:1 on its background."""
    return gr.themes.Default().set(
        body_text_color_subdued="*neutral_600", body_text_color_subdued_dark="*neutral_300",
        block_info_text_color="*neutral_600", block_info_text_color_dark="*neutral_300",
        block_label_text_color="*neutral_700", block_label_text_color_dark="*neutral_200",
        block_title_text_color="*neutral_700", block_title_text_color_dark="*neutral_200",
        input_placeholder_color="*neutral_500", input_placeholder_color_dark="*neutral_400",
        button_primary_background_fill="*primary_700", button_primary_background_fill_dark="*primary_700",
        button_primary_background_fill_hover="*primary_800", button_primary_background_fill_hover_dark="*primary_800",
        button_primary_border_color="*primary_700", button_primary_border_color_dark="*primary_700",
        button_cancel_background_fill="#b91c1c", button_cancel_background_fill_dark="#b91c1c",
        button_cancel_text_color="white", button_cancel_text_color_dark="white",
        link_text_color="*secondary_700", link_text_color_dark="*secondary_300",
    )


CSS = """
/* focus: a ring on whatever the keyboard reaches */
button:focus-visible, input:focus-visible, textarea:focus-visible, select:focus-visible, summary:focus-visible,
a:focus-visible, [role="tab"]:focus-visible, [role="button"]:focus-visible, [tabindex]:focus-visible,
.label-wrap:focus-visible {
  outline: 3px solid #1d4ed8 !important; outline-offset: 2px !important; box-shadow: 0 0 0 5px #ffffff !important;
}
/* Gradio's container hides overflow, which would pin sticky elements to it: clip instead (no scroll box) */
.gradio-container { overflow: clip !important; }
/* the status area (state of the job, time left, preview) stays in view while the settings scroll */
#jobbar { position: sticky; top: 0; z-index: 40; background: var(--background-fill-primary);
  border: 1px solid var(--border-color-primary); border-radius: var(--radius-lg); padding: 6px 10px; }
#jobbar #preview { max-width: 220px; }
#info { min-height: 2.6em; }
.zi-status { font-size: var(--text-md); line-height: 1.4; }
.zi-stage { font-weight: 600; }
.zi-times { color: var(--body-text-color-subdued); font-size: var(--text-sm); }
.zi-bar { height: 8px; background: var(--neutral-200); border-radius: 4px; overflow: hidden; margin: 4px 0; }
.zi-bar > div { height: 100%; background: #1d4ed8; transition: width 0.1s linear; }
.zi-error { border-left: 4px solid #b91c1c; padding-left: 8px; }
.zi-error-text, .zi-error strong { color: #991b1b; }
.dark .zi-error-text, .dark .zi-error strong { color: #fca5a5; }
.zi-error pre { white-space: pre-wrap; font-size: var(--text-sm); }
.zi-ok { color: #166534; }
.dark .zi-ok { color: #86efac; }
.zi-notes { margin: 2px 0 0 1.2em; font-size: var(--text-sm); }
kbd { border: 1px solid var(--border-color-primary); border-radius: 3px; padding: 0 3px; font-size: 0.9em; }
#generate { min-height: 52px; font-size: var(--text-lg); }
.zi-first-run table { font-size: var(--text-sm); }
.zi-first-run td, .zi-first-run th { padding: 2px 8px; }
/* desktop: the results column stays in view beside the settings */
@media (min-width: 1024px) {
  #results-col { position: sticky; top: 0; align-self: flex-start; max-height: 100vh; overflow-y: auto; }
}
/* phone (one column): while a job runs, or an error waits to be read, the status area sits at the bottom of the
   screen, wherever the page is scrolled to (the results below the settings too) */
@media (max-width: 1023px) {
  #jobbar:has(.zi-running), #jobbar:has(.zi-error) { position: fixed; top: auto; bottom: 0; left: 0; right: 0;
    margin: 0; border-radius: 0; box-shadow: 0 -2px 8px rgba(0, 0, 0, 0.25); max-height: 45vh; overflow-y: auto; }
}
/* phone: buttons and cards fit the width */
@media (max-width: 640px) {
  #lora-cards .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
  #history-gallery .grid-container { grid-template-columns: repeat(3, minmax(0, 1fr)) !important; }
  .zi-actions button { flex: 1 1 45%; }
  #jobbar #preview { max-width: 140px; }
}
"""

HEAD = """
<script>
(() => {
  const visible = (el) => el && el.offsetParent !== null;
  // Ctrl+Enter (Cmd+Enter on a Mac) generates, wherever the focus is
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {
      const go = document.querySelector("#generate");
      if (visible(go) && !go.disabled) { e.preventDefault(); e.stopPropagation(); go.click(); }
    }
  }, true);
  // a PNG dropped anywhere but on a picture input restores its settings (through the restore box)
  const onInput = (t) => t && t.closest && t.closest("input[type=file], [data-testid=image], [data-testid=file], " +
    ".upload-container, .image-container, #restore, #mask-paint, #i2l-pictures");
  const files = (e) => e.dataTransfer && [...(e.dataTransfer.types || [])].includes("Files");
  document.addEventListener("dragover", (e) => { if (files(e) && !onInput(e.target)) e.preventDefault(); });
  document.addEventListener("drop", (e) => {
    if (!files(e) || onInput(e.target)) return;
    const png = [...e.dataTransfer.files].find((f) => f.type === "image/png" || /\\.png$/i.test(f.name));
    const input = document.querySelector("#restore input[type=file]");
    if (!png || !input) return;
    e.preventDefault();
    const dt = new DataTransfer();
    dt.items.add(png);
    input.files = dt.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  });
  // the elapsed time of a running job goes on between the server's updates
  setInterval(() => {
    document.querySelectorAll(".zi-elapsed").forEach((el) => {
      if (!el.dataset.seen) el.dataset.seen = String(performance.now());
      const s = parseFloat(el.dataset.elapsed) + (performance.now() - parseFloat(el.dataset.seen)) / 1000;
      el.textContent = s < 60 ? s.toFixed(1) + " s" : Math.floor(s / 60) + " min " +
        String(Math.floor(s % 60)).padStart(2, "0") + " s";
    });
  }, 250);
  // the model list shows names; each option's tooltip gives the type's id
  const ids = () => {
    const config = window.gradio_config;
    const comp = config && (config.components || []).find((c) => c.props && c.props.elem_id === "model-type");
    return (comp && comp.props.choices) || [];
  };
  // a text box whose <label> also holds a button (Gradio's copy button) is named by that button: name it
  const name = () => document.querySelectorAll("textarea[data-testid=textbox]:not([aria-label])").forEach((t) => {
    const info = t.closest("label") && t.closest("label").querySelector("[data-testid=block-info]");
    if (info && t.labels && [...t.labels].every((l) => l.control !== t)) t.setAttribute("aria-label", info.textContent.trim());
  });
  new MutationObserver(() => {
    name();
    const box = document.querySelector("#model-type");
    if (!box) return;
    const choices = ids();
    box.querySelectorAll("ul.options li").forEach((li) => {
      const found = choices.find((c) => c[0] === li.textContent.trim());
      if (found && li.title !== "id: " + found[1]) li.title = "id: " + found[1];
    });
    const input = box.querySelector("input");
    const current = input && choices.find((c) => c[0] === input.value);
    if (current && input.title !== "id: " + current[1]) input.title = "id: " + current[1];
  }).observe(document.documentElement, { childList: true, subtree: true });
})();
</script>
"""


class StudioBlocks(gr.Blocks):
    """gr.Blocks launched with the page's theme, CSS and script unless the caller gives its own."""

    def launch(self, *args, **kwargs):
        kwargs.setdefault("theme", theme())
        kwargs.setdefault("css", CSS)
        kwargs.setdefault("head", HEAD)
        return super().launch(*args, **kwargs)
