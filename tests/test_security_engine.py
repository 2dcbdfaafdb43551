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

from engine.errors import ModelDefinitionError, ModelFileError, SettingsError

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

    at_once(load_directly, types)
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

    at_once(load_through_engine, types)
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


# ---- crafted files: safetensors headers, hub URLs ---------------------------------------------------------

def write_safetensors(path: Path, header, data: bytes = b"\0" * 4, raw: bytes | None = None) -> Path:
    """A file laid out as the safetensors format says: 8-byte little-endian header size, JSON, data."""
    text = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


TENSOR = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}


def test_a_huge_header_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A 100 MiB header used to be parsed (738 MB of RAM) before being refused."""
    import engine.jsontext
    from engine.weights.safetensors_io import MAX_HEADER, read_header

    metadata = {"note": "x" * (MAX_HEADER + 2**20)}
    path = write_safetensors(tmp_path / "big.safetensors", {"__metadata__": metadata, "t": TENSOR})
    monkeypatch.setattr(engine.jsontext, "parse_json_object", lambda *a: pytest.fail("the header was parsed"))
    with pytest.raises(ModelFileError, match=r"header claims 17 MiB; this app reads headers up to 16 MiB"):
        read_header(path)


@pytest.mark.parametrize("header, raw, words", [
    ({"__metadata__": ["a"], "t": TENSOR}, None, "__metadata__ must map text to text"),
    ({"__metadata__": {"a": 1}, "t": TENSOR}, None, "__metadata__ must map text to text"),
    ({"t": {**TENSOR, "shape": ["1"]}}, None, "entry 't' is malformed"),
    ({"t": {**TENSOR, "shape": [-1]}}, None, "entry 't' is malformed"),
    ({"t": {**TENSOR, "data_offsets": [0, "4"]}}, None, "entry 't' is malformed"),
    ({"t": "not an entry"}, None, "entry 't' is malformed"),
    (None, b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (None, b'{"t": ' + b"[" * 200 + b"]" * 200 + b"}", "nested too deeply"),
    (None, b"\xff\xfe not text", "not UTF-8 text"),
    (None, b"[1, 2]", "must be a JSON object"),
])
def test_odd_safetensors_headers_are_one_clear_error(tmp_path, header, raw, words):
    from engine.weights.safetensors_io import read_header

    path = write_safetensors(tmp_path / "odd.safetensors", header, raw=raw)
    with pytest.raises(ModelFileError, match=words):
        read_header(path)


@pytest.mark.parametrize("metadata", [
    {"config": "[1, 2]"}, {"config": "[" * 5000 + "]" * 5000}, {"config_base64": "!!!"},
    {"quantization_map_base64": "WzEsIDJd"},  # [1, 2]
    {"quantization_map_base64": "eyJhIjogMX0="},  # {"a": 1}
    {"lora_adapter_metadata": '{"lora_alpha": 8, "alpha_pattern": {"(": 2, "x": "y"}}'},
    {"lora_adapter_metadata": '{"lora_alpha": true}'},
    {"lora_adapter_metadata": "[" * 5000 + "]" * 5000},
])
def test_odd_metadata_values_are_ignored_not_tracebacks(metadata):
    """Metadata other tools write (configs, quanto maps, PEFT alpha) is optional: when it is damaged the
    reader falls back to what the tensors say."""
    from engine.lora.format import peft_alpha
    from engine.weights.quantization import quantization_map
    from models.z_image.config import metadata_config

    assert metadata_config(metadata) == {}
    assert quantization_map(metadata) == {}
    alpha = peft_alpha(metadata)
    assert alpha is None or alpha("layers.0.attention.to_q", 4) == 8  # a broken pattern is skipped


@pytest.mark.parametrize("url", [
    "https://huggingface.co/a/b/resolve/main/../../../../etc/passwd",
    "https://huggingface.co/a/b/resolve/main/sub/../../x.safetensors",
    "https://huggingface.co/../b/resolve/main/x.safetensors",
    "https://huggingface.co/a/b/resolve/../x.safetensors",
    "https://huggingface.co/a/b/tree/main/./..",
    "https://huggingface.co/a/b/resolve/main/sub//x.safetensors",
    "https://huggingface.co/a/b/resolve/main/..\\x.safetensors",
])
def test_hub_urls_cannot_lead_outside_the_checkpoints_folder(url, tmp_path):
    from engine.weights.files import FileLocator, parse_ref

    with pytest.raises(ModelDefinitionError, match="refused"):
        parse_ref(url)
    ref = parse_ref("https://huggingface.co/a/b/resolve/main/sub/x.safetensors")
    assert (tmp_path / ref.path).resolve().is_relative_to(tmp_path)
    assert FileLocator(tmp_path).local_path(ref) is None


# ---- saving without hard links ------------------------------------------------------------------------------

def test_saves_racing_on_a_filesystem_without_hard_links_keep_every_image(tmp_path, monkeypatch):
    """Where hard links are missing, saving checked the name, then replaced: 4 racing saves left 1 file.
    Here every thread reaches its rename at the same moment (a barrier), the worst case for that check."""
    import os

    from PIL import Image

    from engine.outputs import save_png
    from engine.settings import GenerationSettings

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")  # what FAT, exFAT and some network shares answer

    n = 6
    barrier = threading.Barrier(n)
    real_replace = os.replace

    def replace_together(src, dst):
        try:
            barrier.wait(5)
        except threading.BrokenBarrierError:
            pass
        return real_replace(src, dst)

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(os, "replace", replace_together)
    settings = GenerationSettings("z_image", "a race", seed=7)
    paths, errors = [], []

    def save(i):
        try:
            paths.append(save_png(Image.new("RGB", (8, 8), (i, 0, 0)), settings, {"i": i}, tmp_path))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    files = sorted(tmp_path.glob("*.png"))
    assert len(set(paths)) == n and len(files) == n
    assert sorted(Image.open(f).getpixel((0, 0))[0] for f in files) == list(range(n))  # no image overwritten
    assert not list(tmp_path.glob(".partial-*"))


# ---- PNG settings someone else made -------------------------------------------------------------------------

def png_with(tmp_path, text: str) -> Path:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("zimage_settings", text)
    path = tmp_path / "crafted.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("text, words", [
    ('{"settings": ' + "[" * 50000 + "]" * 50000 + "}", "nested too deeply"),
    ('{"settings": [1, 2]}', "damaged"),
    ('[1, 2]', "must be a JSON object"),
    ('{"settings": {"model_type": "z_image"}}', "at least 'model_type' and 'prompt'"),
])
def test_crafted_png_settings_are_one_clear_error(tmp_path, text, words):
    from engine.outputs import read_png_settings

    with pytest.raises(SettingsError, match=words):
        read_png_settings(png_with(tmp_path, text))


@pytest.mark.parametrize("record", [[1, 2], {"loras": "x"}, {"loras": [{"name": "a.safetensors", "sha256": 5}]},
                                    {"loras": [{"name": ["a"]}, 3]}])
def test_a_png_record_of_any_shape_restores_with_notes(engine, tmp_path, record):
    from engine.merge import merge_settings
    from engine.outputs import read_png_settings

    settings = {"model_type": "z_image_tiny_test", "prompt": "p", "loras": [{"name": "a.safetensors"}]}
    path = png_with(tmp_path, json.dumps({"settings": settings, "record": record}))
    restored, rec = read_png_settings(path)
    merged = merge_settings(engine, "z_image_tiny_test", base=restored.to_dict(), record=rec)
    assert merged.settings.loras == [] and "not in the LoRA folder" in merged.notes[0]


# ---- command line ----------------------------------------------------------------------------------------

def test_lora_strength_typo_names_the_strength(tiny_model_json, capsys):
    from app.cli import main

    code = main(["generate", "--model-def", str(tiny_model_json[0]), "--model", "z_image_tiny_test",
                 "--prompt", "x", "--lora", "style.safetensors:strong"])
    err = capsys.readouterr().err
    assert code == 2 and "'strong' is not a strength" in err and "only .safetensors" not in err


@pytest.mark.parametrize("command", ["generate", "control-map"])
def test_unwritable_output_fails_before_any_work(tiny_model_json, tmp_path, monkeypatch, capsys, command):
    from PIL import Image

    from app.cli import main
    from engine.engine import Engine

    monkeypatch.setattr(Engine, "load", lambda *a, **k: pytest.fail("loaded a model for an unwritable output"))
    monkeypatch.setattr(Engine, "control_map", lambda *a, **k: pytest.fail("made a map for an unwritable output"))
    from models.z_image.tiny import write_control_test_model

    control_json = write_control_test_model(tmp_path)
    Image.new("RGB", (64, 64)).save(tmp_path / "photo.png")
    (tmp_path / "a_file").write_text("not a folder")
    extra = ["--model", "z_image_control_tiny_test", "--control-image", str(tmp_path / "photo.png"),
             "--control-mode", "gray"] if command == "control-map" else ["--model", "z_image_tiny_test"]
    code = main([command, "--model-def", str(tiny_model_json[0]), "--model-def", str(control_json), *extra,
                 "--prompt", "x", "--output", str(tmp_path / "a_file" / "out")])
    assert code == 1 and "is not a folder this app can write to" in capsys.readouterr().err


def at_once(fn, items) -> None:
    """fn(item) for every item, each in its own thread, all started before any is waited for."""
    threads = [threading.Thread(target=fn, args=(item,)) for item in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

