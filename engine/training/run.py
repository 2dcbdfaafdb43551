"""One LoRA training run, start to finish: run it as a job, `engine.jobs.submit(lambda ctx:
engine.train_lora(settings, ctx), owner, "train")`, so it shares the one GPU queue and Stop stops it.

Order, so that only what is needed sits in memory: captions (and sample prompts) are encoded once and the text
encoder is freed; images are encoded into latents once (per bucket) and the VAE leaves the GPU; then the
frozen transformer is loaded (bf16 or INT8, as the load options choose), the family's training adapter (if
any) attached at +1, and the LoRA trained on top. Samples are made without the adapter, as users will run
the LoRA. A checkpoint and a LoRA snapshot are written every `save_every` steps, and on Stop.

The family's side (`handler.training_backend(model_def, locator, options, dtype, device)`) provides:
  device, dtype, shift, adapter_file(choice) -> (path | None, notes), encode_prompts(texts, cached) ->
  {text: [tokens, dim]}, release_text_encoder(), encode_images([PIL], (W, H)) -> [B, C, h, w],
  release_vae(), load_transformer(checkpointing) -> module, targets(refiners) -> {module: (out, in)},
  attach_adapter(path), predict(x_t [B, C, h, w], sigma [B], captions) -> velocity [B, C, h, w],
  sample(settings, captions) -> [PIL], file_tensors(lora, dtype) -> {key: tensor}.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from engine import APP_NAME, APP_VERSION
from engine.errors import Interrupted, UserError
from engine.training import checkpoint as C
from engine.training import dataset, optim
from engine.training.buckets import bucket_size, fit, resolutions_for
from engine.training.events import TrainResult
from engine.training.lora import TrainableLora
from engine.training.loop import Batches, Loop, Sample
from engine.training.output import check_writable, free_path, write_new, write_replacing
from engine.training.settings import FIXED_ON_RESUME, TrainSettings
from engine.training.timesteps import NoiseLevels

SAMPLE_MAX_SIDE = 1024


@dataclass
class Run:
    """A prepared run: the loop and what finishing it needs."""

    settings: TrainSettings
    loop: Loop
    backend: object
    data: dataset.Dataset
    adapter: Path | None
    library: object  # engine.lora.library.LoraLibrary
    model_def: object
    notes: list


def train(engine, settings: TrainSettings, ctx, options=None) -> TrainResult:
    run = prepare(engine, settings, ctx, options)
    ctx.stage("training")
    run.loop.guarded()
    return finish(run, ctx)


def prepare(engine, settings: TrainSettings, ctx, options=None) -> Run:
    """Everything up to the first step: checks, dataset, cached captions and latents, model, LoRA, optimizer
    (restored from the checkpoint when resuming)."""
    s = settings.validate()
    model_def = engine.registry.get(s.model_type)
    if engine.components:  # the command line's --text-encoder / --vae, as Engine.load applies them
        model_def = dataclasses.replace(model_def, model={**model_def.model, **engine.components})
    handler = engine.registry.handler(s.model_type)
    if not getattr(handler, "trainable", lambda arch: False)(model_def.architecture):
        raise UserError(f"{s.model_type}: LoRA training is not available for the {model_def.architecture} "
                        "architecture")
    kind = optim.choose(s.optimizer, engine.device)
    library = engine.lora_library(s.model_type)
    run_dir = Path(s.output_dir) / s.name
    check_writable(library.folder, "the LoRA folder")
    check_writable(run_dir, "the training folder")
    s, ckpt, notes = _resume_or_new(s, run_dir)
    target = free_path(library.folder, s.name)
    if target.stem != s.name:
        notes.append(f"{s.name}.safetensors exists in the LoRA folder: the result will be {target.name}")

    ctx.stage("reading the dataset")
    data = dataset.scan(s.images, s.trigger)
    if ckpt is not None and ckpt.dataset_hash != data.digest:
        raise UserError(f"the images or captions in {s.images} changed since the checkpoint: resuming needs the "
                        "same dataset (or start a new run under another --name)")
    ctx.stage("finding the model's files (downloading what is missing)")
    backend = handler.training_backend(model_def, engine.locator, options or engine.options, engine.dtype,
                                       engine.device)
    ctx.stage("finding the training adapter (downloading it if missing)")
    adapter, adapter_notes = backend.adapter_file(s.adapter)
    notes = notes + data.notes + adapter_notes
    for note in notes:
        ctx.note(note)
    prompts = list(s.sample_prompts) or [s.trigger or data.items[0].caption or "a photo"]

    ctx.stage(f"encoding {len(data.items)} caption(s) and {len(prompts)} sample prompt(s)")
    captions = backend.encode_prompts(list(dict.fromkeys([i.caption for i in data.items] + prompts + [""])))
    if s.cache_text:
        backend.release_text_encoder()
    samples = _encode_images(backend, data, s.resolutions, ctx)
    backend.release_vae()

    ctx.stage("loading the transformer")
    transformer = backend.load_transformer(s.gradient_checkpointing)
    if adapter is not None:
        backend.attach_adapter(adapter)
    lora = TrainableLora(backend.targets(s.refiners), s.rank, s.alpha, s.seed).to(backend.device)
    lora.attach(transformer)
    loop = Loop(s, backend, lora, optim.make_optimizer(lora.parameters(), s.learning_rate, kind), kind,
                Batches(samples, s.batch_size, s.seed), NoiseLevels(backend.shift, s.timesteps),
                captions if s.cache_text else {}, ctx, run_dir, data.digest,
                save_lora=lambda step: _snapshot(backend, lora, s, data, adapter, step, run_dir, model_def),
                make_samples=lambda step: _samples(engine, backend, s, prompts, captions, step, run_dir))
    if ckpt is not None:
        loop.restore(ckpt)
        ctx.note(f"resuming at step {ckpt.step} of {s.steps}")
    return Run(s, loop, backend, data, adapter, library, model_def, notes)


def finish(run: Run, ctx) -> TrainResult:
    """After the last step: the final checkpoint and samples, then the LoRA in the LoRA folder."""
    loop, s = run.loop, run.settings
    loop.save()
    if not loop.samples or loop.samples[-1][0] != loop.step:
        loop.sample()
    try:
        ctx.stage("saving the LoRA")
    except Interrupted:
        pass  # every step is done: the result is written whatever Stop says now
    tensors, metadata = _lora_file(run.backend, loop.lora, s, run.data, run.adapter, loop.step, run.model_def)
    path = write_new(tensors, run.library.folder, s.name, metadata)
    return TrainResult(path, run.library.resolve(path.name).name, loop.step, loop.history, loop.run_dir,
                       loop.samples, run.notes)


def _resume_or_new(s: TrainSettings, run_dir: Path):
    """(settings, checkpoint or None, notes): a resumed run keeps the checkpoint's training choices."""
    path = run_dir / "checkpoint.safetensors"
    if not s.resume:
        if path.exists():
            step = _checkpoint_step(path)
            raise UserError(f"a training run named {s.name!r} exists ({run_dir}, at step {step}): add --resume to "
                            "continue it, or choose another --name")
        return s, None, []
    if not path.is_file():
        raise UserError(f"nothing to resume: no checkpoint at {path} (start without --resume)")
    ckpt = C.load(path)
    saved = TrainSettings.from_dict(ckpt.settings)
    notes, changes = [], {}
    for name in FIXED_ON_RESUME:
        mine, theirs = getattr(s, name), getattr(saved, name)
        if mine != theirs:
            changes[name] = theirs
            notes.append(f"resuming keeps the checkpoint's {name.replace('_', ' ')} {theirs!r} (not {mine!r})")
    s = dataclasses.replace(s, **changes)
    if s.steps <= ckpt.step:
        raise UserError(f"the run {s.name!r} is at step {ckpt.step} already: give --steps above {ckpt.step} to "
                        "train further")
    return s, ckpt, notes


def _checkpoint_step(path: Path) -> str:
    try:
        return str(C.load(path).step)
    except UserError:
        return "unknown (damaged checkpoint)"


def _encode_images(backend, data, resolutions, ctx) -> list[Sample]:
    """Each image at each resolution it trains at, as latents (the VAE runs once per image and size)."""
    from engine.images.io import load_rgb

    samples = []
    for n, item in enumerate(data.items):
        ctx.stage(f"encoding images {n + 1}/{len(data.items)}")
        image = load_rgb(item.path, "training image")
        for r in resolutions_for(item.width, item.height, resolutions):
            size = bucket_size(item.width, item.height, r)
            latent = backend.encode_images([fit(image, size)], size)[0]
            samples.append(Sample(latent, item.caption, size))
    return samples


def _samples(engine, backend, s: TrainSettings, prompts, captions, step, run_dir) -> list[tuple[Path, str]]:
    """The sample prompts drawn with the model as users will run the LoRA (no adapter), saved as PNGs."""
    from engine.outputs import save_png

    side = min(SAMPLE_MAX_SIDE, max(s.resolutions))
    out = []
    for i, prompt in enumerate(prompts):
        settings = engine.settings_for(s.model_type, prompt=prompt or " ", seed=s.seed + i, width=side,
                                       height=side).validate()
        image = backend.sample(settings, captions)[0]
        record = {"app": f"{APP_NAME} {APP_VERSION}", "kind": "training sample", "lora": s.name, "step": step}
        out.append((save_png(image, settings, record, run_dir / "samples" / f"step{step:06d}_{i}.png"), prompt))
    return out


def _lora_file(backend, lora, s: TrainSettings, data, adapter, step, model_def) -> tuple[dict, dict]:
    """The LoRA's tensors (in the family's file layout) and metadata."""
    import json

    tensors = backend.file_tensors(lora, backend.dtype)
    metadata = {
        "format": "pt", "trained_with": f"{APP_NAME} {APP_VERSION}", "base_model": s.model_type,
        "base_model_name": str(model_def.model.get("name", s.model_type)),
        "base_model_file": Path(str(getattr(backend, "transformer_path", ""))).name,
        "training_adapter": Path(adapter).name if adapter else "none",
        "rank": str(s.rank), "alpha": f"{lora.alpha:g}", "steps": str(step), "learning_rate": f"{s.learning_rate:g}",
        "batch_size": str(s.batch_size), "resolution": ",".join(str(r) for r in s.resolutions),
        "trigger_words": json.dumps([s.trigger] if s.trigger else []), "dataset_size": str(len(data.items)),
        "dataset_hash": data.digest, "timesteps": s.timesteps, "seed": str(s.seed),
        "targets": ",".join(sorted({n.split(".", 2)[-1] for n in lora.names})),
    }
    return tensors, metadata


def _snapshot(backend, lora, s, data, adapter, step, run_dir, model_def) -> Path:
    tensors, metadata = _lora_file(backend, lora, s, data, adapter, step, model_def)
    return write_replacing(tensors, run_dir / f"{s.name}_step{step:06d}.safetensors", metadata)
