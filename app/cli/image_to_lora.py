"""`image-to-lora`: a style LoRA from 1-16 pictures (Z-Image-i2L), written into the LoRA folder, as a job on the
engine's queue."""

from __future__ import annotations

import sys

from app.setup import make_engine

OWNER = "cli"
MODEL_TYPE = "z_image"  # the family whose LoRA folder receives the file


def register(sub, common) -> None:
    p = sub.add_parser("image-to-lora", parents=[common],
                       help="make a style LoRA from pictures (Z-Image-i2L: no training, one pass)")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="1 to 16 pictures of the style (PNG, JPEG, WebP)")
    p.add_argument("--name", help="the new LoRA's name: it is written to <LoRA folder>/NAME.safetensors "
                                  "(an existing file is never overwritten)")
    p.add_argument("--siglip2", metavar="FILE", help="the SigLIP2-G384 encoder file (default: found or downloaded)")
    p.add_argument("--dinov3", metavar="FILE", help="the DINOv3-7B encoder file (default: found or downloaded)")
    p.add_argument("--i2l-model", metavar="FILE", help="the Z-Image-i2L hypernetwork file (default: found or "
                                                       "downloaded)")
    p.add_argument("--i2l-memory", choices=["auto", "whole", "stream", "int8"], default="auto",
                   help="GPU placement of each model: whole (all on the GPU), stream (weights stay in RAM, one block "
                        "at a time on the GPU), int8 (quantized while loading), auto (whole if it fits, else stream)")
    p.add_argument("--both-branches", action="store_true",
                   help="mark the LoRA for both CFG branches (default: positive branch only, as i2L LoRAs are meant)")
    p.add_argument("--show-files", action="store_true", help="say where the three files are (or what would be "
                                                             "downloaded) and stop")
    p.set_defaults(run=cmd_image_to_lora)


def cmd_image_to_lora(args) -> int:
    from engine.jobs import NoteEvent, ProgressEvent, StageEvent

    engine = make_engine(args)
    handler = engine.registry.handler(MODEL_TYPE)
    given = {"siglip2": args.siglip2, "dinov3": args.dinov3, "hypernetwork": args.i2l_model}
    if args.show_files:
        for line in handler.image_to_lora_files(engine.locator, given):
            print(line)
        return 0
    request = engine.prepare_image_to_lora(args.images, args.name or "", MODEL_TYPE, given=given,
                                           memory=args.i2l_memory, dtype=args.dtype,  # default bfloat16
                                           positive_only=not args.both_branches)
    result = None
    for event in engine.jobs.run(lambda ctx: engine.image_to_lora(request, ctx.progress, MODEL_TYPE), OWNER,
                                 "image-to-lora"):
        if isinstance(event, ProgressEvent):
            sys.stderr.write(f"\r{event.done}/{event.total} {event.what:<48}")
            sys.stderr.flush()
        elif isinstance(event, NoteEvent):
            sys.stderr.write(f"\nwarning: {event.message}\n")
        elif not isinstance(event, StageEvent):
            result = event
    sys.stderr.write("\n")
    print(f"{result.path}\t{result.summary()}")
    branch = "" if args.both_branches else " (applied to CFG's positive branch only)"
    print(f"use it{branch}: python app.py generate --model z_image_base --guidance 4 --shift 8 --steps 50 "
          f"--lora \"{result.name}\" --prompt \"...\"", file=sys.stderr)
    return 0
