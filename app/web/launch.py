"""Web UI launch flags, and the launch itself (the UI is built in app.web.page)."""

from __future__ import annotations

import sys
from pathlib import Path

from app.api.mount import add_flags as api_flags
from engine.errors import SettingsError

OUTPUT_DIR = "outputs"


def add(parser) -> None:
    g = parser.add_argument_group("web UI (no command)")
    g.add_argument("--listen", action="store_true", help="serve on all interfaces (0.0.0.0), not only this PC")
    g.add_argument("--server-name", help="address to bind (default 127.0.0.1)")
    g.add_argument("--server-port", type=int, default=7860, help="port (default 7860)")
    g.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    g.add_argument("--auth", metavar="USER:PASSWORD", help="require this login")
    g.add_argument("--auth-file", metavar="FILE", help="require a login from this file (one USER:PASSWORD a line)")
    g.add_argument("--open-browser", action="store_true", help="open the page in the browser")
    g.add_argument("--lock-model", metavar="TYPE", help="serve only this model type")
    api_flags(g)


def parse_logins(auth: str | None, auth_file: str | None) -> list[tuple[str, str]]:
    """USER:PASSWORD pairs from --auth and --auth-file (blank lines and # comments skipped)."""
    lines = [("--auth", auth)] if auth else []
    if auth_file:
        try:
            text = Path(auth_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(f"--auth-file {auth_file}: cannot read it ({exc.strerror})") from None
        lines += [(f"{auth_file} line {n}", line.strip()) for n, line in enumerate(text.splitlines(), 1)
                  if line.strip() and not line.lstrip().startswith("#")]
        if len(lines) == (1 if auth else 0):
            raise SettingsError(f"--auth-file {auth_file}: no USER:PASSWORD lines in it")
    logins = []
    for where, line in lines:
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise SettingsError(f"{where}: expected USER:PASSWORD")
        logins.append((user.strip(), password))
    return logins


def launch(args, block: bool = True):
    """Serve the UI; with block=False (tests) return the running Blocks instead of waiting."""
    from app.api.mount import page_lifespan
    from app.setup import make_engine
    from app.web.page import build_ui

    engine = make_engine(args)
    for note in engine.startup_notes():
        print(f"note: {note}", file=sys.stderr)
    if args.lock_model:
        engine.registry.get(args.lock_model)  # unknown type: clear error before serving
    logins = parse_logins(args.auth, args.auth_file)
    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    exposed = (args.share or host not in ("127.0.0.1", "localhost")) and not logins
    if exposed:
        print("WARNING: the app is reachable from other machines without a login: anyone with the address can "
              "use your GPU. Add --auth USER:PASSWORD.", file=sys.stderr)
    demo = build_ui(engine, lock_model=args.lock_model, exposed_without_auth=exposed, output_dir=OUTPUT_DIR)
    app_kwargs = {}
    if not args.no_api:  # the HTTP API at /v1, next to the page (app.api); without a login, this computer only
        lifespan, api_auth = page_lifespan(engine, args, logins, OUTPUT_DIR)
        if exposed and not api_auth.enabled:
            print("note: the HTTP API (/v1) is off: without a login it serves this computer only, and this page "
                  "is reachable from others (add --auth or --api-key-file)", file=sys.stderr)
        else:
            app_kwargs["lifespan"] = lifespan
            local = "" if api_auth.enabled else ", answering this computer only (no login)"
            print(f"note: HTTP API at /v1 (documentation: /v1/docs){local}", file=sys.stderr)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=args.server_port, share=args.share, auth=logins or None,
        inbrowser=args.open_browser, allowed_paths=[str(Path(OUTPUT_DIR).resolve())], prevent_thread_lock=not block,
        app_kwargs=app_kwargs)
    return 0 if block else demo
