"""Web UI launch flags, and the launch itself (the UI is built in core.ui)."""

from __future__ import annotations

import sys


def add(parser) -> None:
    g = parser.add_argument_group("web UI (no command)")
    g.add_argument("--listen", action="store_true", help="serve on all interfaces (0.0.0.0), not only this PC")
    g.add_argument("--server-name", help="address to bind (default 127.0.0.1)")
    g.add_argument("--server-port", type=int, default=7860, help="port (default 7860)")
    g.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    g.add_argument("--auth", metavar="USER:PASSWORD", help="require this login")
    g.add_argument("--open-browser", action="store_true", help="open the page in the browser")
    g.add_argument("--lock-model", metavar="TYPE", help="serve only this model type")


def launch(args) -> int:
    from core.cli import make_engine
    from core.ui import build_ui

    engine = make_engine(args)
    for note in engine.startup_notes():
        print(f"note: {note}", file=sys.stderr)
    if args.lock_model:
        engine.registry.get(args.lock_model)  # unknown type: clear error before serving
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            from core.errors import SettingsError

            raise SettingsError("--auth takes USER:PASSWORD")
        auth = (user, password)
    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    if (args.share or host != "127.0.0.1") and not auth:
        print("WARNING: the app is reachable from other machines without a login: anyone with the address can "
              "use your GPU. Add --auth USER:PASSWORD.", file=sys.stderr)
    demo = build_ui(engine, lock_model=args.lock_model)
    demo.queue(default_concurrency_limit=1).launch(server_name=host, server_port=args.server_port,
                                                   share=args.share, auth=auth, inbrowser=args.open_browser)
    return 0
