"""Robustness of the engine against concurrency and hostile files (issue 18): model building in several
threads, image fitting memory, safetensors headers, hub URLs, racing saves, odd PNG settings."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from engine.errors import ModelDefinitionError, ModelFileError, SettingsError, UserError

ROOT = Path(__file__).resolve().parent.parent


# ---- High 2: building models in several threads -------------------------------------------------------

def test_build_empty_moves_only_its_own_threads_parameters():
    """accelerate's init_empty_weights patched nn.Module for the whole process: a model built meanwhile in
    another thread came out empty, and overlapping uses could leave the patch in place for good."""
    from engine.weights.assign import build_empty

    inside, release, built = threading.Event(), threading.Event(), []

    def factory():
        first = torch.nn.Linear(3, 3)
        inside.set()
        assert release.wait(10)
        return torch.nn.Sequential(first, torch.nn.LayerNorm(3))

    worker = threading.Thread(target=lambda: built.append(build_empty(factory)))
    worker.start()
    assert inside.wait(10)
    elsewhere = torch.nn.Linear(3, 3)  # another thread builds a real model while the first is inside
    nested = build_empty(lambda: torch.nn.Linear(2, 2))  # and an empty build of its own, ending first
    release.set()
    worker.join(10)
    assert elsewhere.weight.device.type == "cpu" and not elsewhere.weight.is_meta
    assert nested.weight.is_meta
    assert built and all(p.is_meta for p in built[0].parameters())
    assert not torch.nn.Linear(2, 2).weight.is_meta  # nothing left patched


def test_two_loads_at_once_on_a_cold_engine_then_generation_works(tiny_model_json, tmp_path):
    """Two model types loaded at the same moment from two threads (the engine's lock bypassed: each
    thread calls the family loader itself), then through the engine from two threads, then a generation."""
    from engine.engine import Engine
    from engine.registry import Registry
    from engine.weights.files import FileLocator
    from models import families
    from models.z_image.tiny import write_control_test_model

    json_path, folder = tiny_model_json
    control_json = write_control_test_model(tmp_path)
    engine = Engine(Registry(families(), extra_files=[json_path, control_json]), FileLocator(offline=True))
    types = ["z_image_tiny_test", "z_image_control_tiny_test"]
    start, models, errors = threading.Barrier(2), {}, []

    def load_directly(model_type):
        try:
            start.wait(10)
            model_def = engine.registry.get(model_type)
            models[model_type] = engine.registry.handler(model_type).load(
                model_def, engine.locator, engine.dtype, engine.device, engine.options)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=load_directly, args=(t,)) for t in types]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for model in models.values():
        assert not any(p.is_meta for p in model.transformer.parameters())
    del models

    start = threading.Barrier(2)

    def load_through_engine(model_type):
        try:
            start.wait(10)
            engine.load(model_type)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load_through_engine, args=(t,)) for t in types]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    settings = engine.settings_for("z_image_tiny_test", prompt="after two loads", seed=3, num_inference_steps=2)
    *_, (result,) = engine.jobs.run(lambda ctx: engine.generate(engine.prepare(settings), ctx.on_step), "t")
    assert result.image.size == (256, 256)


# ---- High 3: a thin strip of an image -----------------------------------------------------------------

FIT_IN_A_SMALL_ADDRESS_SPACE = r"""
import resource, sys
from PIL import Image
from engine.images.io import fit_image

strip = Image.new("RGB", (1, 8000), (200, 30, 30))
with open("/proc/self/status") as fh:
    vm = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 400 * 2**20, resource.RLIM_INFINITY))  # a MemoryError, not a swap storm
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for mode in ("crop", "image", "fit"):
    out = fit_image(strip, 1024, 1024, mode)
    assert out.size == (1024, 1024), out.size
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_fitting_a_thin_strip_needs_memory_of_the_output_size_only():
    """fit_image resized before cropping: a 110-byte 1x8000 PNG needed GBs. Now the crop is taken first; the
    child process may not grow by more than 400 MB of address space, and its resident peak grows by a few MB."""
    done = subprocess.run([sys.executable, "-c", FIT_IN_A_SMALL_ADDRESS_SPACE], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) < 64 * 1024  # KiB of resident peak growth: three 3 MB outputs


def test_a_strip_is_refused_with_its_ratio_and_a_crop_is_the_centre(tmp_path):
    from PIL import Image

    from engine.images.io import ImageFileError, fit_image, load_rgb

    Image.new("RGB", (1, 8000)).save(tmp_path / "strip.png")
    with pytest.raises(ImageFileError, match=r"1x8000 pixels is a 8000:1 strip; pictures up to 20:1"):
        load_rgb(tmp_path / "strip.png", "control image")
    picture = Image.new("RGB", (300, 100), (0, 0, 255))
    picture.paste((255, 0, 0), (100, 0, 200, 100))  # a red square in the middle third
    crop = fit_image(picture, 64, 64, "crop")
    assert crop.getpixel((32, 32)) == (255, 0, 0) and crop.getpixel((1, 32))[0] > 200  # only the centre kept
    fit = fit_image(picture, 96, 96, "fit", fill=0)
    assert fit.getpixel((48, 2)) == (0, 0, 0) and fit.getpixel((2, 48))[2] > 200  # letterboxed top and bottom
