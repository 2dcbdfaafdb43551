"""The one "new file, never overwrite" rule: with hard links, and where a filesystem has none."""

import os

import pytest
import torch
from PIL import Image

from engine.errors import UserError
from engine.publish import publish_new


def no_links(monkeypatch):
    def refuse(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)


def partial(folder, text):
    tmp = folder / f".partial-{text}"  # each write its own temporary file, as the writers do
    tmp.write_text(text)
    return tmp


@pytest.mark.parametrize("links", [True, False])
def test_first_free_name_and_none_when_all_taken(tmp_path, monkeypatch, links):
    if not links:
        no_links(monkeypatch)
    (tmp_path / "a").write_text("old")
    names = [tmp_path / "a", tmp_path / "b"]
    assert publish_new(partial(tmp_path, "new"), names) == tmp_path / "b"
    assert (tmp_path / "a").read_text() == "old" and (tmp_path / "b").read_text() == "new"
    assert publish_new(partial(tmp_path, "newer"), names) is None
    assert [(tmp_path / n).read_text() for n in "ab"] == ["old", "new"]


def test_the_three_writers_without_hard_links(tmp_path, monkeypatch):
    from engine.lora.writer import write_new as write_lora
    from engine.outputs import save_png
    from engine.settings import GenerationSettings
    from engine.training.output import write_new as write_trained

    no_links(monkeypatch)
    s = GenerationSettings(model_type="z_image", prompt="p", seed=3)
    pngs = [save_png(Image.new("RGB", (4, 4), c), s, {}, tmp_path / "png" / "x.png") for c in ("red", "blue")]
    assert [p.name for p in pngs] == ["x.png", "x_1.png"]
    assert Image.open(pngs[0]).getpixel((0, 0)) == (255, 0, 0)
    t = {"a": torch.ones(2)}
    trained = [write_trained(t, tmp_path / "train", "style", {}) for _ in range(2)]
    assert [p.name for p in trained] == ["style.safetensors", "style_2.safetensors"]
    path = write_lora(tmp_path / "lora" / "mine.safetensors", t, {})
    with pytest.raises(UserError, match="created meanwhile"):
        write_lora(path, t, {})
    for folder in ("png", "train", "lora"):  # no partial file left behind
        assert not [p for p in (tmp_path / folder).iterdir() if p.name.startswith(".")]
