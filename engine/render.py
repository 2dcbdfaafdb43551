"""The one job every serving front-end runs on a worker (this process, a worker process, a Ray replica):
a prepared request in, finished PNG files (bytes, settings embedded) out. Whoever asked writes them
(engine.outputs.write_png_bytes), so a worker that dies mid-job leaves nothing half-written."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import UserError


@dataclass(frozen=True)
class Rendered:
    png: bytes  # the whole PNG file, settings and record embedded
    settings: dict  # the settings that reproduce it (its run's seed), as in the PNG
    seed: int


def render(engine, request, ctx) -> list[Rendered]:
    """Run `request` (engine.engine.Request) on `engine` inside a job (`ctx`: engine.jobs.JobContext): LoRAs,
    generate, encode. Steps are reported without their latents (nobody previews them, and they would pile up
    in the job's events)."""
    import torch

    for warning in engine.apply_loras(request):
        ctx.note(warning)
    try:
        results = engine.generate(request, lambda run, step, total, _latents: ctx.on_step(run, step, total, None),
                                  ctx.on_token)
    except torch.cuda.OutOfMemoryError:
        engine.unload()  # the next job loads afresh rather than fail the same way
        s = request.settings
        raise UserError(f"out of GPU memory at {s.width}x{s.height} (batch {s.batch_size}): the model was "
                        "unloaded; try a smaller size or batch") from None
    ctx.stage("encoding")
    return [Rendered(png, r.settings.to_dict(), r.settings.seed) for png, r in zip(engine.encode(results), results)]
