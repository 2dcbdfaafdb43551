"""`models`, `quantize` and `make-test-model`: the model types and their files."""

from __future__ import annotations

import sys
from pathlib import Path

from app.setup import make_engine
from engine.errors import UserError
from engine.weights.files import human_size


def register(sub, common) -> None:
    sub.add_parser("models", parents=[common], help="list model types and whether their files are present") \
        .set_defaults(run=cmd_models)
    tiny = sub.add_parser("make-test-model", parents=[common],
                          help="write a tiny random-weight model (draws noise) and its model JSON, for offline tries")
    tiny.add_argument("folder")
    tiny.set_defaults(run=cmd_make_test_model)
    quant = sub.add_parser("quantize", parents=[common],
                           help="write INT8 copies of a model type's bf16 files (the format Wan2GP reads and writes)")
    quant.add_argument("--model", required=True, help="model type whose files to quantize")
    quant.add_argument("--component", choices=["all", "transformer", "text_encoder"], default="all")
    quant.add_argument("--output", metavar="DIR", help="folder for the INT8 files (default: --checkpoints)")
    quant.set_defaults(run=cmd_quantize)


def cmd_models(args) -> int:
    engine = make_engine(args)
    for name in sorted(engine.registry.types):
        model_def = engine.registry.get(name)
        handler = engine.registry.handler(name)
        caps = handler.capabilities(model_def.architecture)
        state = "" if caps.available else "  [generation not available in this version]"
        print(f"{name}: {model_def.name} ({model_def.architecture}){state}")
        for note in model_def.ignored:
            print(f"    note: {note}")
        try:
            for status in handler.file_status(model_def, engine.locator, engine.options):
                where = f"present  {status.path}" if status.path else \
                    f"missing  will download {status.source} ({human_size(status.size)})"
                print(f"    {status.component:<13} {where}" + (f"  [{status.detail}]" if status.detail else ""))
            choices = handler.quantization_choices(model_def, engine.locator)
            if any(len(kinds) > 1 for kinds in choices.values()):
                print("    alternatives: " + ", ".join(f"{c} {'/'.join(k)}" for c, k in choices.items()))
        except UserError as exc:
            print(f"    problem: {exc}")
    return 0


def cmd_make_test_model(args) -> int:
    engine = make_engine(args)
    for handler in sorted(set(engine.registry.handlers.values()), key=lambda h: h.family):
        written = handler.write_test_models(Path(args.folder))
        for path, what in written:
            print(f"wrote {what}: {path}")
        if written:
            path = written[0][0]
            print(f"try: python app.py generate --model-def {path} --model {path.stem} --prompt 'a test'")
    return 0


def cmd_quantize(args) -> int:
    from engine.finetunes import add_alternative, shadowed_by

    engine = make_engine(args)
    model_def = engine.registry.get(args.model)
    handler = engine.registry.handler(args.model)
    components = ["transformer", "text_encoder"] if args.component == "all" else [args.component]
    folder = Path(args.output) if args.output else engine.locator.checkpoints
    for done in handler.quantize(model_def, engine.locator, components, folder):
        verb = "wrote" if done.written else "kept the existing"
        print(f"{done.component}: {verb} {done.path} ({human_size(done.path.stat().st_size)})")
        listed_in = add_alternative(engine.registry.user_folder, model_def, done.field, done.path, engine.locator,
                                    done.source)
        if listed_in:
            print(f"    added to {listed_in} as an alternative in \"{done.field}\"")
            shadow = shadowed_by(model_def, engine.registry.folders)
            if shadow:
                print(f"note: {shadow} (--model-def) overrides that: add {done.path} to its \"{done.field}\" list",
                      file=sys.stderr)
    print(f"use them: python app.py generate --model {args.model} --transformer-quantization int8 "
          "--text-encoder-quantization int8 --prompt ...")
    return 0
