"""The LoRA folder (names, safety, refresh), LoRA entries in the settings, presets, and PNG restore checks."""

import hashlib
import os

import pytest

from engine.errors import SettingsError
from engine.lora import presets
from engine.lora.library import LoraLibrary
from engine.settings import (GenerationSettings, lora_item, lora_strength_at, normalize_loras, parse_lora_arg)


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "loras"
    touch(root / "b.safetensors")
    touch(root / "styles" / "Ink.safetensors", b"ink")
    touch(root / "notes.txt")
    touch(root / "old.ckpt")
    touch(tmp_path / "outside.safetensors")
    os.symlink(tmp_path / "outside.safetensors", root / "link_out.safetensors")
    os.symlink(root / "b.safetensors", root / "styles" / "link_in.safetensors")
    return root


def test_scan_is_recursive_sorted_and_refreshes(folder):
    lib = LoraLibrary(folder)
    assert lib.names() == ["b.safetensors", "styles/Ink.safetensors", "styles/link_in.safetensors"]
    touch(folder / "new" / "a.safetensors")
    assert "new/a.safetensors" in lib.names()  # the same object sees the new file
    assert LoraLibrary(folder / "missing").names() == []


@pytest.mark.parametrize("name,words", [
    ("../outside.safetensors", "'..' is not allowed"),
    ("styles/../../outside.safetensors", "'..' is not allowed"),
    ("styles\\..\\..\\outside.safetensors", "'..' is not allowed"),
    ("/etc/passwd.safetensors", "not an absolute path"),
    ("link_out.safetensors", "link leading outside"),
    ("old.ckpt", "only .safetensors"),
    ("Ink.safetensors", "a file of that name is at styles/Ink.safetensors"),
    ("nope.safetensors", "is not in the LoRA folder"),
    ("", "must be a path inside"),
])
def test_names_leading_outside_or_missing_are_refused(folder, name, words):
    with pytest.raises(SettingsError, match=words.replace("(", r"\(").replace(")", r"\)")):
        LoraLibrary(folder).resolve(name)


def test_resolve_and_sha256(folder):
    lib = LoraLibrary(folder)
    f = lib.resolve("styles/Ink.safetensors")
    assert f.path == (folder / "styles" / "Ink.safetensors").resolve() and f.size == 3
    assert lib.sha256(f) == hashlib.sha256(b"ink").hexdigest()
    assert lib.resolve("styles/link_in.safetensors").path == (folder / "b.safetensors").resolve()


def test_lora_entries_in_settings():
    assert parse_lora_arg("a.safetensors") == {"name": "a.safetensors", "strength": 1.0, "schedule": None}
    assert parse_lora_arg("s/a.safetensors:-0.5") == {"name": "s/a.safetensors", "strength": -0.5, "schedule": None}
    assert parse_lora_arg("a.safetensors:1.0,0.5") == {"name": "a.safetensors", "strength": 1.0,
                                                       "schedule": [1.0, 0.5]}
    s = GenerationSettings(model_type="z_image", prompt="p", loras=[{"name": "a.safetensors", "strength": 1,
                                                                     "schedule": "1, 0.25"}]).validate()
    assert s.loras == [lora_item("a.safetensors", 1.0, [1.0, 0.25])]
    assert GenerationSettings.from_dict(s.to_dict()) == s
    for bad, words in [
        ([{"name": "a.safetensors", "strength": 2.5}], "out of range"),
        ([{"name": "a.safetensors", "strength": "x"}], "must be a number"),
        ([{"name": "a.safetensors", "schedule": "1,x"}], "not comma-separated numbers"),
        ([{"name": "a.safetensors", "schedule": [3.0]}], "out of range"),
        ([{"name": "a.safetensors"}, {"name": "a.safetensors"}], "listed twice"),
        ([{"name": "a.safetensors", "weight": 1}], "unknown field"),
        ([{"strength": 1}], "must be"),
        ("a.safetensors", "must be a list"),
        ([{"name": f"{i}.safetensors"} for i in range(17)], "at most 16"),
    ]:
        with pytest.raises(SettingsError, match=words):
            normalize_loras(bad)


def test_schedule_spreads_over_the_steps():
    item = lora_item("a.safetensors", 0.8, "1.0,0.5")
    assert [lora_strength_at(item, i, 8) for i in range(8)] == [0.8] * 4 + [0.4] * 4
    item3 = lora_item("a.safetensors", 1.0, [1, 0.5, 0])
    assert [lora_strength_at(item3, i, 4) for i in range(4)] == [1.0, 1.0, 0.5, 0.0]
    assert [lora_strength_at(item3, i, 2) for i in range(2)] == [1.0, 0.5]  # more values than steps
    assert lora_strength_at(lora_item("a.safetensors", -1.5), 3, 8) == -1.5


def test_presets_round_trip(folder):
    loras = [lora_item("b.safetensors", 0.7), lora_item("styles/Ink.safetensors", -1.0, "1,0")]
    path = presets.save_preset(folder, "ink night", loras, prompt="ink drawing, night")
    assert path == folder / "presets" / "ink night.json"
    assert presets.list_presets(folder) == ["ink night"]
    assert presets.load_preset(folder, "ink night") == {"loras": loras, "prompt": "ink drawing, night"}
    with pytest.raises(SettingsError, match="exists already"):
        presets.save_preset(folder, "ink night", loras)
    presets.save_preset(folder, "ink night", loras[:1], overwrite=True)
    assert presets.load_preset(folder, "ink night")["loras"] == loras[:1]
    assert LoraLibrary(folder).names() == ["b.safetensors", "styles/Ink.safetensors", "styles/link_in.safetensors"]
    presets.delete_preset(folder, "ink night")
    assert presets.list_presets(folder) == []


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 81])
def test_preset_names_stay_in_the_folder(folder, name):
    with pytest.raises(SettingsError, match="preset name"):
        presets.save_preset(folder, name, [lora_item("b.safetensors")])


def test_damaged_preset_is_named(folder):
    touch(folder / "presets" / "bad.json", b"{not json")
    with pytest.raises(SettingsError, match="bad.json is damaged"):
        presets.load_preset(folder, "bad")
    touch(folder / "presets" / "strong.json", b'{"loras": [{"name": "b.safetensors", "strength": 9}]}')
    with pytest.raises(SettingsError, match="preset 'strong'.*out of range"):
        presets.load_preset(folder, "strong")
    with pytest.raises(SettingsError, match="no LoRA preset 'gone'.*presets: bad, strong"):
        presets.load_preset(folder, "gone")


def test_snippet_is_added_once():
    assert presets.with_snippet("a cat", "ink style") == "a cat, ink style"
    assert presets.with_snippet("a cat, Ink Style", "ink style") == "a cat, Ink Style"
    assert presets.with_snippet("", "ink style") == "ink style"


def test_restore_warns_about_missing_moved_and_changed_loras(folder):
    lib = LoraLibrary(folder)
    items = [lora_item("b.safetensors", 0.5), lora_item("Ink.safetensors"), lora_item("gone.safetensors")]
    recorded = lib.record([items[0], lora_item("styles/Ink.safetensors")])
    recorded[1]["name"] = "Ink.safetensors"  # it was at the top of the folder when the image was made
    recorded.append({"name": "gone.safetensors", "sha256": "ab" * 32})
    assert recorded[0] == {"name": "b.safetensors", "file": "b.safetensors", "size": 1, "strength": 0.5,
                           "sha256": hashlib.sha256(b"x").hexdigest(), "schedule": None}
    kept, notes = lib.restore(items, recorded)
    assert [x["name"] for x in kept] == ["b.safetensors", "styles/Ink.safetensors"]
    assert len(notes) == 2 and "found at 'styles/Ink.safetensors'" in notes[0]
    assert "'gone.safetensors' used for this image is not in the LoRA folder" in notes[1]
    touch(folder / "b.safetensors", b"retrained")
    kept, notes = lib.restore(items[:1], recorded)
    assert kept == items[:1] and len(notes) == 1 and "differs from the file used for this image" in notes[0]
