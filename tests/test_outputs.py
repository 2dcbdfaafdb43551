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
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []  # encoded before writing


def test_interrupted_write_of_finished_bytes_leaves_nothing(tmp_path, monkeypatch):
    """A worker's PNG bytes are written by whoever asked: a failure mid-write leaves no file, not half a one."""
    from engine.outputs import png_bytes, write_png_bytes

    data = png_bytes(Image.new("RGB", (8, 8), "red"), settings(), {"worker": 1})

    def full_disk(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="disk full"):
        write_png_bytes(data, 7, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.undo()
    path = write_png_bytes(data, 7, tmp_path / "out")
    assert path.read_bytes() == data and path.name.endswith("_seed7.png")
    assert read_png_settings(path)[1] == {"worker": 1}


def test_png_without_settings(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(SettingsError, match="holds no settings"):
        read_png_settings(tmp_path / "plain.png")
    (tmp_path / "fake.png").write_bytes(os.urandom(64))
    with pytest.raises(SettingsError, match="not a readable image"):
        read_png_settings(tmp_path / "fake.png")
    with pytest.raises(SettingsError, match="not found"):
        read_png_settings(tmp_path / "missing.png")
