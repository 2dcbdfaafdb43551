"""--text-encoder-device: the text encoder on a device of its own (a second GPU), outside the memory profile.
CUDA is not here: the argument path and the placement are checked with stand-ins, and a CPU-to-CPU run end
to end."""

import numpy as np
import pytest
import torch

from app.cli import build_parser, main
from app.setup import load_options_from_args
from engine.errors import SettingsError
from engine.load_options import LoadOptions
from engine.placement import offload

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusals do not apply")


def test_flag_reaches_the_load_options():
    args = build_parser().parse_args(["generate", "--text-encoder-device", "cpu", "--prompt", "x"])
    assert load_options_from_args(args).text_encoder_device == "cpu"
    assert load_options_from_args(build_parser().parse_args(["generate"])).text_encoder_device is None


@no_cuda
def test_a_cuda_text_encoder_without_cuda_is_refused_before_loading(tiny_model_json, capsys, tmp_path):
    with pytest.raises(SettingsError, match="text encoder device cuda:1: PyTorch sees no CUDA GPU"):
        LoadOptions(text_encoder_device="cuda:1").validate()
    code = main(["generate", "--model-def", str(tiny_model_json[0]), "--model", "z_image_tiny_test", "--prompt",
                 "x", "--text-encoder-device", "cuda:1", "--output", str(tmp_path)])
    assert code == 2 and "text encoder device cuda:1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_device_name_that_is_not_one_is_refused():
    for name in ("gpu1", "tpu:0", "cuda:x"):
        with pytest.raises(SettingsError, match="is not a device such as cuda:1 or cpu"):
            LoadOptions(text_encoder_device=name).validate()


def test_the_text_encoder_leaves_the_memory_profile_for_its_own_device(monkeypatch):
    """On a CUDA transformer with a profile, the text encoder goes whole to its device; mmgp gets the rest."""
    profiled = {}

    class FakeMmgp:
        @staticmethod
        def profile(parts, **kwargs):
            profiled.update(parts)
            return None

    monkeypatch.setattr(offload, "import_mmgp", lambda: FakeMmgp)
    moved = []

    class Part(torch.nn.Linear):
        def to(self, *args, **kwargs):
            moved.append(args)
            return self

    parts = {"transformer": Part(2, 2), "text_encoder": Part(2, 2), "vae": Part(2, 2)}
    placement = offload.place(parts, LoadOptions(profile=4, text_encoder_device="cpu"), torch.device("cuda"),
                              torch.bfloat16)
    assert placement.profile == 4
    assert set(profiled) == {"transformer", "vae"} and moved == [("cpu",)]
    profiled.clear()
    moved.clear()
    offload.place(parts, LoadOptions(profile=4), torch.device("cuda"), torch.bfloat16)
    assert set(profiled) == {"transformer", "text_encoder", "vae"} and moved == []  # default: all in the profile


def test_cpu_to_cpu_run_gives_the_same_image(engine, tmp_path):
    from engine.engine import Engine

    separate = Engine(engine.registry, engine.locator, options=LoadOptions(text_encoder_device="cpu"))
    settings = engine.settings_for("z_image_tiny_test", prompt="a boat", negative_prompt="fog", seed=4,
                                   num_inference_steps=2, width=256, height=256)
    ours = separate.generate(settings)
    reference = engine.generate(settings)
    assert np.array_equal(np.asarray(ours[0].image), np.asarray(reference[0].image))
    assert separate.model.encoder.text_encoder.device.type == "cpu"
    assert separate.record(0, settings)["load"]["text_encoder_device"] == "cpu"  # said in the PNG
