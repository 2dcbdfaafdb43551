"""PNG outputs: settings travel into the file and back; nothing is overwritten or half-written."""

import os

import pytest
from PIL import Image

from engine.errors import SettingsError
from engine.outputs import read_png_settings, save_png
from engine.settings import GenerationSettings


def settings(**kw):
    return GenerationSettings(model_type="z_image", prompt="ünïcode prompt ✓", seed=12, **kw)


def test_round_trip(tmp_path):
    s = settings(negative_prompt="blurry", width=512, height=768)
    path = save_png(Image.new("RGB", (8, 8)), s, {"files": {"transformer": "t.safetensors"}}, tmp_path)
    back, record = read_png_settings(path)
    assert back == s
    assert record["files"]["transformer"] == "t.safetensors"


def test_never_overwrites(tmp_path):
    target = tmp_path / "same.png"
    paths = [save_png(Image.new("RGB", (4, 4), c), settings(), {}, target) for c in ("red", "blue", "green")]
    assert len(set(paths)) == 3 and paths[0] == target
    assert Image.open(paths[0]).getpixel((0, 0)) == (255, 0, 0)  # the first file kept its content


def test_failed_write_leaves_nothing(tmp_path):
    class Broken:
        def save(self, fh, **kw):
            fh.write(b"\x89PNG partial")
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_png(Broken(), settings(), {}, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_png_without_settings(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(SettingsError, match="holds no settings"):
        read_png_settings(tmp_path / "plain.png")
    (tmp_path / "fake.png").write_bytes(os.urandom(64))
    with pytest.raises(SettingsError, match="not a readable image"):
        read_png_settings(tmp_path / "fake.png")
    with pytest.raises(SettingsError, match="not found"):
        read_png_settings(tmp_path / "missing.png")
