"""The NAG, sampler and schedule flags of `generate`: into the settings, validated, stored in the PNG."""

import json

import pytest

from app.cli import build_parser, main
from app.cli.generate import settings_from_args


def test_flags_reach_the_settings(engine, tiny_model_json):
    args = build_parser().parse_args([
        "generate", "--model-def", str(tiny_model_json[0]), "--model", "z_image_tiny_test", "--prompt", "a cat",
        "--negative-prompt", "a dog", "--nag-scale", "2.5", "--nag-tau", "3", "--nag-alpha", "0.4",
        "--nag-start", "0.1", "--nag-end", "0.9", "--sampler", "heun", "--scheduler", "beta",
        "--sigma-rescale", "0.996"])
    s = settings_from_args(engine, args)
    assert (s.nag_scale, s.nag_tau, s.nag_alpha, s.nag_start, s.nag_end) == (2.5, 3.0, 0.4, 0.1, 0.9)
    assert (s.sampler, s.scheduler, s.sigma_rescale) == ("heun", "beta", 0.996)
    assert engine.check(s) == []


@pytest.mark.parametrize("flags,words", [
    (["--nag-start", "0.8", "--nag-end", "0.5"], "NAG start 0.8 must be below NAG end 0.5"),
    (["--nag-scale", "0.5"], "NAG scale 0.5 is out of range"),
    (["--nag-alpha", "2"], "NAG alpha"),
    (["--scheduler", "karras"], "unknown scheduler 'karras'"),
    (["--sampler", "twinflow"], "sampler 'twinflow' is not available for z_image"),
])
def test_bad_values_exit_2(tiny_model_json, tmp_path, capsys, flags, words):
    code = main(["generate", "--model-def", str(tiny_model_json[0]), "--model", "z_image_tiny_test",
                 "--prompt", "x", "--output", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_png_keeps_the_new_settings(tiny_model_json, tmp_path, capsys):
    out = tmp_path / "img.png"
    assert main(["generate", "--model-def", str(tiny_model_json[0]), "--model", "z_image_tiny_test", "--prompt", "x",
                 "--negative-prompt", "y", "--nag-scale", "2", "--sampler", "dpmpp_2m", "--scheduler", "sgm_uniform",
                 "--steps", "2", "--seed", "1", "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["settings", str(out)]) == 0
    shown = json.loads(capsys.readouterr().out)["settings"]
    assert (shown["nag_scale"], shown["sampler"], shown["scheduler"]) == (2.0, "dpmpp_2m", "sgm_uniform")
