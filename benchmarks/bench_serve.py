"""Serving benchmark on the tiny model: the HTTP API with 1 vs 2 worker processes, and the API's own cost.

1. Throughput and latency: `serve --gpus cpu` (one worker process, all cores) and `serve --gpus cpu,cpu` (two,
   the cores shared out), each fed by --clients clients submitting jobs one after another (POST, poll, GET the
   PNG). Jobs per minute and p50/p95 latency (POST to image fetched). Both servers are up at once and take
   turns round by round, so the machine's load touches both alike. Target: 2 workers >= 1.7x the jobs per
   minute of 1 where the machine has the cores (one per worker at least; the cores are reported).
2. The API's overhead per job: the same small job through the engine alone (generate + save, the CLI's path)
   and through POST / poll / GET on a server in this process, alternating; overhead = median difference.
   Target: under 50 ms.

Prints a table and one JSON line. Run: python benchmarks/bench_serve.py [--rounds 2] [--jobs 3] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LOAD_POLL = 0.05  # seconds between a client's polls under load (often enough: jobs take about a second)
OVERHEAD_POLL = 0.002  # one client timing one small job: small, so polling adds little to what is measured


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def start(model_json: Path, work: Path, gpus: str | None, threads: int | None = None):
    from app.api.server import serve
    from app.cli import build_parser
    from tests.serving import free_port

    flags = ["serve", "--model-def", str(model_json), "--server-port", str(free_port()), "--output",
             str(work / f"out-{gpus or 'inproc'}"), "--max-queue", "64", "--max-jobs-per-user", "64"]
    return serve(build_parser().parse_args(flags + (["--gpus", gpus] if gpus else [])), block=False,
                 threads=threads)


def one_job(http, settings, poll: float = LOAD_POLL, ids: list | None = None) -> float:
    """POST, poll until done, GET the PNG; seconds. The job's id is appended to `ids`."""
    t0 = time.perf_counter()
    job = http.post("/v1/jobs", json=settings).json()
    while (view := http.get(job["url"]).json())["state"] not in ("done", "failed", "cancelled"):
        time.sleep(poll)
    assert view["state"] == "done", view
    assert http.get(view["images"][0]["url"]).status_code == 200
    if ids is not None:
        ids.append(job["id"])
    return time.perf_counter() - t0


def load_round(url: str, clients: int, jobs: int, settings: dict) -> tuple[float, list[float]]:
    """`clients` threads, each submitting `jobs` jobs one after another; (wall seconds, latencies)."""
    import httpx

    latencies, lock = [], threading.Lock()

    def client(c):
        with httpx.Client(base_url=url, timeout=600) as http:
            for j in range(jobs):
                seconds = one_job(http, {**settings, "seed": 1000 * c + j})
                with lock:
                    latencies.append(seconds)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies


def throughput(model_json, work, args) -> dict:
    settings = {"model_type": model_json.stem, "prompt": "a lighthouse", "num_inference_steps": args.steps,
                "width": args.size, "height": args.size}
    cores = os.cpu_count() or 1
    # (workers, torch threads each): 1 worker on all the cores, 2 sharing them, and 1 on one core's share
    servers = {(1, cores): start(model_json, work, "cpu", cores), (2, 1): start(model_json, work, "cpu,cpu", 1),
               (1, 1): start(model_json, work, "cpu", 1)}
    try:
        for (workers, _), server in servers.items():  # warm up: every worker loads the model once
            load_round(server.url, workers, 1, settings)
        results = {w: {"wall": 0.0, "jobs": 0, "latencies": []} for w in servers}
        for _ in range(args.rounds):
            for key, server in servers.items():
                wall, latencies = load_round(server.url, args.clients, args.jobs, settings)
                results[key]["wall"] += wall
                results[key]["jobs"] += len(latencies)
                results[key]["latencies"] += latencies
    finally:
        for server in servers.values():
            server.stop()
    return {key: {"workers": key[0], "torch_threads_per_worker": key[1], "jobs": r["jobs"],
                  "jobs_per_min": 60 * r["jobs"] / r["wall"], "p50_s": percentile(r["latencies"], 0.5),
                  "p95_s": percentile(r["latencies"], 0.95)} for key, r in results.items()}


def overhead(model_json, work, args) -> dict:
    """The same small job through the engine alone and through the API (a server in this process), taking
    turns: medians of each, and per API job its latency minus its own run on the queue (load, generate, write:
    the engine's part), which is what the API adds (HTTP, validation, queueing, polling, fetching the PNG)."""
    import httpx

    from engine.engine import Engine
    from engine.registry import Registry
    from engine.weights.files import FileLocator
    from models import families

    engine = Engine(Registry(families(), extra_files=[model_json]), FileLocator(offline=True), "float32", "cpu")
    settings = engine.settings_for(model_json.stem, prompt="a lighthouse", seed=5, num_inference_steps=2,
                                   width=256, height=256)
    request = engine.prepare(settings)
    server = start(model_json, work, None)
    body = {"model_type": model_json.stem, "prompt": "a lighthouse", "seed": 5, "num_inference_steps": 2,
            "width": 256, "height": 256}
    direct, api, ids = [], [], []
    try:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            one_job(http, body, OVERHEAD_POLL)  # warm up both
            engine.save(engine.generate(request), work / "direct")
            for _ in range(args.overhead_repeats):
                t0 = time.perf_counter()
                engine.save(engine.generate(request), work / "direct")
                direct.append(time.perf_counter() - t0)
                api.append(one_job(http, body, OVERHEAD_POLL, ids))
        runs = [server.backend.queue.get(i) for i in ids]
        added = [latency - (job.finished - job.started) for latency, job in zip(api, runs)]
    finally:
        server.stop()
    return {"engine_s": statistics.median(direct), "api_s": statistics.median(api),
            "difference_ms": 1000 * (statistics.median(api) - statistics.median(direct)),
            "overhead_ms": 1000 * statistics.median(added), "overhead_p95_ms": 1000 * percentile(added, 0.95)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=3, help="jobs per client per round")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--overhead-repeats", type=int, default=15)
    args = ap.parse_args()
    from models.z_image.tiny import write_test_model

    work = Path(tempfile.mkdtemp(prefix="zimage-serve-bench-"))
    model_json = write_test_model(work / "model")
    load_before = os.getloadavg()[0]
    cost = overhead(model_json, work, args)
    runs = throughput(model_json, work, args)
    load_after = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    speedup = runs[(2, 1)]["jobs_per_min"] / runs[(1, cores)]["jobs_per_min"]
    per_worker = runs[(2, 1)]["jobs_per_min"] / runs[(1, 1)]["jobs_per_min"]

    print(f"\nServing the tiny model ({args.size}x{args.size}, {args.steps} steps), {args.clients} clients, "
          f"{cores} cores on this machine (load average {load_before:.1f} before, {load_after:.1f} after)")
    print("| workers | torch threads each | jobs | jobs/min | p50 latency s | p95 latency s |")
    print("|---|---|---|---|---|---|")
    for r in runs.values():
        print(f"| {r['workers']} | {r['torch_threads_per_worker']} | {r['jobs']} | {r['jobs_per_min']:.1f} | "
              f"{r['p50_s']:.2f} | {r['p95_s']:.2f} |")
    cores_note = "" if cores >= 2 else " (fewer cores than workers: not expected to reach it)"
    print(f"2 workers vs 1: {speedup:.2f}x the jobs per minute (target >= 1.7x{cores_note}); vs 1 worker with one "
          f"core's threads: {per_worker:.2f}x")
    print("\n| path (256x256, 2 steps) | median s |")
    print("|---|---|")
    print(f"| engine alone (generate + save) | {cost['engine_s']:.3f} |")
    print(f"| HTTP API (POST, poll, GET PNG) | {cost['api_s']:.3f} |")
    print(f"difference of the medians: {cost['difference_ms']:.1f} ms (both paths under the machine's load)")
    print(f"API overhead per job (latency minus the job's own run): {cost['overhead_ms']:.1f} ms median, "
          f"{cost['overhead_p95_ms']:.1f} ms p95 (target < 50 ms)")
    print(json.dumps({"bench": "serve", "cores": cores, "load_before": load_before, "load_after": load_after,
                      "clients": args.clients, "size": args.size, "steps": args.steps,
                      "runs": list(runs.values()), "speedup_2_vs_1": speedup,
                      "speedup_2_vs_1_one_thread": per_worker, **cost}))


if __name__ == "__main__":
    main()
