"""The History tab: the outputs folder's images (this user's, with logins), newest first, by day, with search in
their prompts and pages of 24; clicking one shows it with its settings and the result actions (use its
settings, reuse its seed, send it to img2img...). Pictures reach the page as content-hashed cache copies
(app.web.history)."""

from __future__ import annotations

import html

import gradio as gr

from app.web import results
from app.web.handlers import clicked_png, user_of

PRIVATE = dict(api_visibility="private")
ALL_DAYS = "all days"


class HistoryBrowser:
    def __init__(self, app):
        self.app = app
        self.history = app.history

    def show(self, day, query, page, request: gr.Request = None) -> dict:
        """One page of the listing, and the days to choose from."""
        user = user_of(request)
        listing = self.history.browse(user, None if day in (None, "", ALL_DAYS) else day, query or "", page or 0)
        items = [(self.history.served(i.path), i.caption()) for i in listing.items]
        days = [(f"{ALL_DAYS} ({sum(n for _, n in listing.days)})", ALL_DAYS)] + [
            (f"{d} ({n})", d) for d, n in listing.days]
        return {"history_gallery": gr.update(value=items, selected_index=None), "history_page": listing.page,
                "history_label": listing.label(), "history_day": gr.update(choices=days),
                "history_older": gr.update(interactive=listing.page + 1 < listing.pages),
                "history_newer": gr.update(interactive=listing.page > 0)}

    def on_history_open(self, day, query, request: gr.Request = None) -> dict:
        return self.show(day, query, 0, request)

    def on_history_older(self, day, query, page, request: gr.Request = None) -> dict:
        return self.show(day, query, (page or 0) + 1, request)

    def on_history_newer(self, day, query, page, request: gr.Request = None) -> dict:
        return self.show(day, query, max(0, (page or 0) - 1), request)

    def on_history_select(self, evt: gr.SelectData) -> dict:
        """An image clicked: its settings and the actions' view of it (only Gradio's own copies are read)."""
        path, settings, error = clicked_png(evt)
        if path is None or error:
            return {"hist_used": {"error": error}, "hist_selected": path} if error else {}
        view = self.app.result_view(path, settings)
        return {"hist_used": settings.to_dict(), "hist_selected": path, "hist_link": view.get("result_link", ""),
                "hist_command": view.get("result_command", ""),
                "hist_info": f"<p><strong>{html.escape(settings.prompt[:200])}</strong> · seed {settings.seed} · "
                             f"{html.escape(self.app.engine.registry.get(settings.model_type).name if settings.model_type in self.app.types else settings.model_type)}"
                             f" · {settings.width}x{settings.height}</p>"}


def build(app, page) -> HistoryBrowser:
    browser = HistoryBrowser(app)
    if not app.history.browsable:
        gr.Markdown("The history of earlier images is off: this page is reachable from other machines without a "
                    "login, and the outputs folder would show everyone's images. Start the app with `--auth` to "
                    "browse your own. This browser's latest results are in the Generate tab.",
                    elem_id="history-off")
    with gr.Row(equal_height=True):
        page.add("history_day", gr.Dropdown([(ALL_DAYS, ALL_DAYS)], value=ALL_DAYS, label="Day", scale=1,
                                            elem_id="history-day"))
        page.add("history_query", gr.Textbox(label="Search in prompts", placeholder="words from the prompt", scale=2,
                                             elem_id="history-query"))
        page.add("history_refresh", gr.Button("Refresh", size="sm", scale=0, elem_id="history-refresh"))
    page.add("history_gallery", gr.Gallery(label="Earlier images (newest first)", columns=6, height=440,
                                           allow_preview=False, object_fit="cover", format="png",
                                          fit_columns=False,
                                           elem_id="history-gallery"))
    with gr.Row(equal_height=True):
        page.add("history_newer", gr.Button("Newer", size="sm", interactive=False, elem_id="history-newer"))
        page.add("history_label", gr.Markdown("", elem_id="history-label"))
        page.add("history_older", gr.Button("Older", size="sm", interactive=False, elem_id="history-older"))
    page.add("history_page", gr.State(0))
    page.add("hist_selected", gr.State(None))
    page.add("hist_info", gr.HTML("<p>Click an image to see its settings and reuse it.</p>", elem_id="hist-info"))
    actions = results.build(app, page, "hist", "hist_selected", "hist_info")
    with gr.Accordion("Its settings", open=False):
        page.add("hist_used", gr.JSON(label="Settings of the image", elem_id="hist-used"))
    browser.actions = actions
    return browser


def wire(browser: HistoryBrowser, page, tab) -> None:
    day, query, number = page["history_day"], page["history_query"], page["history_page"]
    shown = ["history_gallery", "history_page", "history_label", "history_day", "history_older", "history_newer"]
    def opened(name):
        return page.wire(results.named(browser.on_history_open, name), shown)

    tab.select(**opened("on_history_open"), inputs=[day, query], **PRIVATE)
    page["history_refresh"].click(**opened("on_history_refresh"), inputs=[day, query], **PRIVATE)
    day.input(**opened("on_history_day"), inputs=[day, query], **PRIVATE)
    query.submit(**opened("on_history_search"), inputs=[day, query], **PRIVATE)
    page["history_older"].click(**page.wire(browser.on_history_older, shown), inputs=[day, query, number], **PRIVATE)
    page["history_newer"].click(**page.wire(browser.on_history_newer, shown), inputs=[day, query, number], **PRIVATE)
    page["history_gallery"].select(**page.wire(browser.on_history_select, ["hist_used", "hist_selected", "hist_link",
                                                                           "hist_command", "hist_info"]), **PRIVATE)
