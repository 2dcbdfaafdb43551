"""The command line that reproduces an image (app.cli.command_line), checked by running it through the CLI's
own parser and settings path: the settings it gives are the image's."""

import dataclasses
import shlex

from app.cli import build_parser
from app.cli.command_line import command_for, command_text, common_flags, lora_arg
from app.cli.generate import settings_from_args
from engine.settings import lora_item
from tests.test_lora_engine import lora_engine  # noqa: F401 (fixture: a LoRA folder for the tiny model)

TINY = "z_image_tiny_test"


def through_cli(engine, argv):
    """The settings the CLI makes from `argv` (as typed in a shell: quoted, split again)."""
    argv = shlex.split(command_text(argv))
    assert argv[:2] == ["python", "app.py"]
    args = build_parser().parse_args(argv[2:])
    assert args.command == "generate"
    return settings_from_args(engine, args).validate()  # as engine.prepare validates it


def comparable(settings):
    # `inputs` (sha256 records) is set when a job is prepared, the same way from either side
    return dataclasses.replace(settings, inputs={})


def test_a_command_gives_back_every_setting(engine, tmp_path):
    from PIL import Image

    picture = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(picture)
    defaults = engine.settings_for(TINY)
    settings = engine.settings_for(
        TINY, prompt='a "quoted" prompt; with $signs and -dashes', negative_prompt="-blurry", seed=1234567,
        num_inference_steps=5, width=320, height=256, batch_size=2, count=3, nag_scale=2.5, nag_end=0.6,
        seed_variance=0.7, text_hidden_layer=-3, sampler="heun", scheduler="beta", sigma_rescale=0.996,
        init_image=str(picture), strength=0.45, outpaint=[0, 16, 32, 0], mask_blur=6,
        hires_strength=0.4).validate()
    argv = command_for(settings, defaults)
    assert "--seed" in argv and "--negative-prompt=-blurry" in argv and "--text-hidden-layer=-3" in argv
    assert comparable(through_cli(engine, argv)) == comparable(settings)


def test_fields_at_their_defaults_are_left_out_but_the_essentials_stay(engine):
    defaults = engine.settings_for(TINY)
    settings = engine.settings_for(TINY, prompt="x", seed=5).validate()
    argv = command_for(settings, defaults)
    assert "--nag-tau" not in argv and "--sampler" not in argv
    for flag in ("--prompt", "--seed", "--steps", "--width", "--height", "--model"):
        assert flag in argv
    assert comparable(through_cli(engine, argv)) == comparable(settings)


def test_enhanced_prompts_are_given_as_used(engine):
    """The PNG of an enhanced prompt holds the rewrite and the original: the command gives the rewrite and no
    --enhance, so it is not rewritten again."""
    settings = engine.settings_for(TINY, prompt="the enhancer's rewrite", original_prompt="a cat", enhance=True,
                                   seed=3).validate()
    argv = command_for(settings, engine.settings_for(TINY))
    assert "--enhance" not in argv
    again = through_cli(engine, argv)
    assert again.prompt == "the enhancer's rewrite" and not again.enhance


def test_loras_with_strengths_schedules_and_branches(lora_engine):
    engine = lora_engine
    loras = [lora_item("kohya.safetensors", 0.8), lora_item("sub/fused.safetensors", 0.5, "1.0,0.5", True)]
    settings = engine.settings_for(TINY, prompt="x", seed=1, loras=loras, guidance_scale=0).validate()
    argv = command_for(settings, engine.settings_for(TINY))
    assert "kohya.safetensors:0.8" in argv and "sub/fused.safetensors:0.5,0.25:positive" in argv
    again = through_cli(engine, argv)
    # the schedule carries the strength: the same strength at every step
    from engine.settings import lora_strength_at

    for before, after in zip(settings.loras, again.loras):
        assert after["name"] == before["name"] and after.get("positive_only") == before.get("positive_only")
        assert [lora_strength_at(after, s, 8) for s in range(8)] == [lora_strength_at(before, s, 8) for s in range(8)]


def test_a_file_that_defaults_to_the_positive_branch_gets_both_when_the_image_used_both():
    item = lora_item("style.safetensors", 1.0)
    assert lora_arg(item, positive_default=True) == "style.safetensors:1:both"
    assert lora_arg(item, positive_default=False) == "style.safetensors:1"


def test_the_running_apps_file_flags_and_model_files_come_along(engine, tiny_model_json):
    args = build_parser().parse_args(["--checkpoints", "/data/ckpts", "--lora-dir-z-image", "/data/loras"])
    common = common_flags(args)
    assert common == ["--checkpoints", "/data/ckpts", "--lora-dir-z-image", "/data/loras"]
    settings = engine.settings_for(TINY, prompt="x", seed=1).validate()
    argv = command_for(settings, model_defs=[tiny_model_json[0]], common=common)
    parsed = build_parser().parse_args(argv[2:])
    assert parsed.checkpoints == "/data/ckpts" and parsed.model_def == [str(tiny_model_json[0])]
