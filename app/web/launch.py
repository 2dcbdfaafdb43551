"""Web UI launch flags, and the launch itself (the UI is built in app.web.page)."""

from __future__ import annotations

import sys
from pathlib import Path

from app.api.mount import add_flags as api_flags

OUTPUT_DIR = "outputs"
MAX_UPLOAD_MB = 50  # a phone photo is a few MB; the decoded size is capped separately (engine.images.io)
MAX_GPU_JOBS = 4  # per user, running or waiting
QUEUE_SIZE = 64  # events waiting in Gradio's queue, all users together


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
    g.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, metavar="MB",
                   help=f"largest file a user may upload (default {MAX_UPLOAD_MB} MB)")
    g.add_argument("--max-queued", type=int, default=MAX_GPU_JOBS, metavar="N",
                   help=f"generations one user may have running or waiting (default {MAX_GPU_JOBS})")
    g.add_argument("--queue-size", type=int, default=QUEUE_SIZE, metavar="N",
                   help=f"requests waiting in the queue, all users together (default {QUEUE_SIZE})")
    api_flags(g)


def launch(args, block: bool = True):
    """Serve the UI; with block=False (tests) return the running Blocks instead of waiting."""
    from starlette.middleware import Middleware

    from app.api.mount import page_lifespan

    from app.auth import Logins, is_loopback
    from app.setup import make_engine
    from app.web.guard import Guard, current_client
    from app.web.page import build_ui
    from engine.errors import SettingsError

    for flag in ("max_upload_mb", "max_queued", "queue_size"):
        if getattr(args, flag) <= 0:
            raise SettingsError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: give a positive number")
    logins = Logins.from_args(args.auth, args.auth_file)
    engine = make_engine(args)
    for note in engine.startup_notes():
        print(f"note: {note}", file=sys.stderr)
    if args.lock_model:
        engine.registry.get(args.lock_model)  # unknown type: clear error before serving
    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    exposed = (args.share or not is_loopback(host)) and not logins.enabled
    if exposed:
        print("WARNING: the app is reachable from other machines without a login: anyone with the address can "
              "use your GPU. Add --auth USER:PASSWORD.", file=sys.stderr)
    demo = build_ui(engine, lock_model=args.lock_model, exposed_without_auth=exposed,
                    output_dir=Path(OUTPUT_DIR).resolve())
    demo.zimage_logins = logins
    app_kwargs = {"middleware": [Middleware(Guard, logins=logins, max_gpu_jobs=args.max_queued)]}
    if not args.no_api:  # the HTTP API at /v1, next to the page (app.api); without a login, this computer only
        lifespan, api_auth = page_lifespan(engine, args, logins, Path(OUTPUT_DIR).resolve())
        if exposed and not api_auth.enabled:
            print("note: the HTTP API (/v1) is off: without a login it serves this computer only, and this page "
                  "is reachable from others (add --auth or --api-key-file)", file=sys.stderr)
        else:
            app_kwargs["lifespan"] = lifespan
            local = "" if api_auth.enabled else ", answering this computer only (no login)"
            print(f"note: HTTP API at /v1 (documentation: /v1/docs){local}", file=sys.stderr)
    # outputs are not in allowed_paths: results reach their session as content-hashed copies in Gradio's
    # cache, never under their guessable names
    blocked = [str(Path(p).resolve()) for p in (args.auth_file, args.checkpoints) if p]
    demo.queue(default_concurrency_limit=1, max_size=args.queue_size).launch(
        server_name=host, server_port=args.server_port, share=args.share, inbrowser=args.open_browser,
        auth=(lambda user, password: logins.check(user, password, current_client())) if logins.enabled else None,
        max_file_size=int(args.max_upload_mb * 2**20), blocked_paths=blocked, app_kwargs=app_kwargs,
        prevent_thread_lock=not block)
    return 0 if block else demo
