"""`train-lora`: train a LoRA on a folder of images, as a job on the engine's queue; Ctrl-C stops it gracefully
(a checkpoint is written; `--resume` continues)."""

from __future__ import annotations

import sys

from app.setup import make_engine
from engine.errors import Interrupted

OWNER = "cli"


def register(sub, common) -> None:
    from engine.training.settings import OPTIMIZER_CHOICES, TIMESTEP_CHOICES

    p = sub.add_parser("train-lora", parents=[common],
                       help="train a LoRA on a folder of images (Turbo with the training adapter, or the base model)")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images with same-name .txt captions")
    p.add_argument("--name", required=True, help="the LoRA's name: loras/z_image/NAME.safetensors (never "
                                                 "overwritten: NAME_2, ... if taken), run folder training/NAME/")
    p.add_argument("--model", default="z_image", help="model type to train on: z_image (Turbo, default) or "
                                                      "z_image_base")
    p.add_argument("--trigger", default="", metavar="WORD", help="caption of images without one; replaces "
                                                                 "[trigger] in captions")
    p.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank, 1-256 (default 16)")
    p.add_argument("--alpha", type=float, help="LoRA alpha (default: the rank, i.e. scale 1)")
    p.add_argument("--lr", default="1e-4", metavar="X", help="learning rate (default 1e-4)")
    p.add_argument("--batch", type=int, default=1, help="images per step, of one bucket (default 1)")
    p.add_argument("--resolution", default="512,768,1024", metavar="R[,R...]",
                   help="bucket sizes, about R x R pixels each, multiples of 32 (default 512,768,1024)")
    p.add_argument("--save-every", type=int, default=250, metavar="N",
                   help="write a checkpoint and a LoRA snapshot every N steps (0: only at the end; default 250)")
    p.add_argument("--sample-every", type=int, default=250, metavar="N",
                   help="draw the sample prompts every N steps (0: only at the end; default 250)")
    p.add_argument("--sample-prompt", action="append", metavar="TEXT",
                   help="a prompt drawn for the samples; repeatable (default: the trigger word)")
    p.add_argument("--seed", type=int, default=42, help="seed of the whole run (default 42)")
    p.add_argument("--resume", action="store_true", help="continue the run of this --name from its checkpoint")
    p.add_argument("--adapter", default="auto", metavar="v1|v2|none|FILE",
                   help="Turbo training adapter: v1 (default for z_image), v2, none (default for z_image_base) "
                        "or a .safetensors file; downloaded when missing")
    p.add_argument("--timesteps", choices=TIMESTEP_CHOICES, default="weighted",
                   help="noise levels: weighted (bell-shaped loss weights, default) or uniform")
    p.add_argument("--refiners", action="store_true", help="also train the noise and context refiner layers")
    p.add_argument("--no-gradient-checkpointing", action="store_true",
                   help="faster steps for much more memory")
    p.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, default="auto",
                   help="auto (8-bit AdamW with bitsandbytes on CUDA, else AdamW), adamw, adamw8bit")
    p.add_argument("--training-dir", default="training", metavar="DIR",
                   help="where run folders (checkpoints, samples) go (default training/)")
    p.set_defaults(run=cmd_train)


def settings_from_args(args):
    from engine.training.settings import TrainSettings

    return TrainSettings(
        name=args.name, images=args.images, model_type=args.model, trigger=args.trigger, steps=args.steps,
        rank=args.rank, alpha=args.alpha, learning_rate=args.lr, batch_size=args.batch, resolutions=args.resolution,
        save_every=args.save_every, sample_every=args.sample_every, sample_prompts=tuple(args.sample_prompt or ()),
        seed=args.seed, resume=args.resume, adapter=args.adapter, timesteps=args.timesteps, refiners=args.refiners,
        gradient_checkpointing=not args.no_gradient_checkpointing, optimizer=args.optimizer,
        output_dir=args.training_dir).validate()


def cmd_train(args) -> int:
    settings = settings_from_args(args)  # bad flags: one clear line before anything loads
    engine = make_engine(args)
    for note in engine.startup_notes():
        print(f"note: {note}", file=sys.stderr)
    job = engine.jobs.submit(lambda ctx: engine.train_lora(settings, ctx), OWNER, "train")
    try:
        _follow(job)
    except KeyboardInterrupt:
        print("\nstopping: writing a checkpoint ...", file=sys.stderr)
        engine.jobs.stop(OWNER)
        _follow(job)
    try:
        result = job.outcome()
    except Interrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 130
    print(file=sys.stderr)
    print(f"{result.lora_path}\t{result.lora_name}\t{result.steps} steps, final loss "
          f"{result.history[-1] if result.history else float('nan'):.4f}")
    return 0


def _follow(job) -> None:
    from engine.jobs import NoteEvent, StageEvent
    from engine.training.events import TrainCheckpoint, TrainProgress, TrainSamples, clock

    for event in job.events():
        if isinstance(event, TrainProgress):
            sys.stderr.write(f"\rstep {event.step}/{event.total}  loss {event.loss:.4f}  "
                             f"{event.seconds_per_step:.2f} s/step  ETA {clock(event.eta_seconds)}   ")
        elif isinstance(event, TrainCheckpoint):
            sys.stderr.write(f"\ncheckpoint at step {event.step}: {event.lora}\n")
        elif isinstance(event, TrainSamples):
            sys.stderr.write(f"samples at step {event.step}: {', '.join(str(p) for p, _ in event.images)}\n")
        elif isinstance(event, NoteEvent):
            sys.stderr.write(f"\nnote: {event.message}\n")
        elif isinstance(event, StageEvent):
            sys.stderr.write(f"{event.name} ...\n")
        sys.stderr.flush()

