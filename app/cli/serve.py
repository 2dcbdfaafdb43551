"""`serve`: the HTTP API alone, for several users: on this GPU, on one worker process per GPU (`--gpus`), or on
a Ray Serve cluster across machines (`--ray`). The page's login flags apply (same users), plus API keys."""

from __future__ import annotations

import argparse

QUEUE_DEFAULT = 32
PER_USER_DEFAULT = 8


def register(sub, common) -> None:
    p = sub.add_parser("serve", parents=[common], help="serve the HTTP API (/v1) for several users and GPUs",
                       description="The HTTP API alone. Without a login (--auth, --auth-file, --api-key-file) it "
                                   "answers this computer only.")
    keep = dict(default=argparse.SUPPRESS)  # given before `serve` (the page's flags) or here: both count
    g = p.add_argument_group("address and users (the page's flags)")
    g.add_argument("--listen", action="store_true", **keep, help="serve on all interfaces (needs a login)")
    g.add_argument("--server-name", **keep, help="address to bind (default 127.0.0.1)")
    g.add_argument("--server-port", type=int, **keep, help="port (default 7860)")
    g.add_argument("--auth", metavar="USER:PASSWORD", **keep, help="a user (HTTP Basic)")
    g.add_argument("--auth-file", metavar="FILE", **keep, help="users, one USER:PASSWORD a line")
    g.add_argument("--api-key-file", metavar="FILE", **keep, help="API keys, one NAME:KEY a line")
    g.add_argument("--lock-model", metavar="TYPE", **keep, help="serve only this model type")
    j = p.add_argument_group("jobs")
    j.add_argument("--output", default="outputs", metavar="DIR", help="where the API's images are written "
                                                                      "(default outputs/)")
    j.add_argument("--gpus", metavar="LIST", help="one worker process per GPU, e.g. 0,1 (cpu,cpu: CPU workers, "
                                                  "for trying it out); default: this process on --device")
    j.add_argument("--max-queue", type=int, default=QUEUE_DEFAULT, metavar="N",
                   help=f"jobs waiting at most; more are answered 429 (default {QUEUE_DEFAULT})")
    j.add_argument("--max-jobs-per-user", type=int, default=PER_USER_DEFAULT, metavar="N",
                   help=f"jobs one user may have waiting (default {PER_USER_DEFAULT})")
    r = p.add_argument_group("Ray Serve (pip install -r requirements-serve.txt)")
    r.add_argument("--ray", action="store_true", help="serve through Ray Serve: a replica per GPU, across machines")
    r.add_argument("--ray-address", metavar="ADDR", help="the Ray cluster to join, e.g. HEAD:6379 (default: a "
                                                         "local Ray started for this command)")
    r.add_argument("--replicas", type=int, metavar="N", help="fixed number of worker replicas (default 1, or "
                                                            "the autoscaling bounds)")
    r.add_argument("--min-replicas", type=int, metavar="N", help="autoscaling: fewest worker replicas")
    r.add_argument("--max-replicas", type=int, metavar="N", help="autoscaling: most worker replicas")
    r.add_argument("--replica-gpus", type=float, default=1.0, metavar="X",
                   help="GPUs per worker replica (default 1; 0: CPU replicas)")
    r.add_argument("--replica-cpus", type=float, default=1.0, metavar="X", help="CPUs per worker replica "
                                                                               "(default 1)")
    p.set_defaults(run=cmd_serve)


def cmd_serve(args) -> int:
    from engine.errors import SettingsError

    for name in ("max_queue", "max_jobs_per_user"):
        if getattr(args, name) < 1:
            raise SettingsError(f"--{name.replace('_', '-')} must be 1 or more")
    if args.ray:
        from app.api.ray_serve import serve_ray

        return serve_ray(args)
    if args.ray_address or args.replicas or args.min_replicas or args.max_replicas:
        raise SettingsError("--ray-address and the replica flags go with --ray")
    from app.api.server import serve

    return serve(args)
