"""Memory profiles (mmgp, mocked: no CUDA here), the profile suggestion, importing mmgp safely, load options,
and the per-stage memory report."""

import json
import subprocess
import sys
from unittest import mock

import pytest
import torch

from engine.placement import offload
from engine.errors import SettingsError, UserError
from engine.load_options import LoadOptions
from engine.placement.memory import MemoryMonitor, summary
from engine.registry import ROOT

GIB = 2**30
CUDA = torch.device("cuda")


class Part(torch.nn.Module):
    """Stands for a component; records moves instead of needing a GPU."""

    def __init__(self):
        super().__init__()
        self.moved_to = None

    def to(self, device):
        self.moved_to = device
        return self


def parts():
    return {"transformer": Part(), "text_encoder": Part(), "vae": Part()}


EXPECTED_BUDGETS = {  # MB per model, as Wan2GP sets them (preload 0 / preload 2500)
    1: (None, None),
    2: ({"transformer": 100, "text_encoder": 100, "*": 3000}, {"transformer": 2500, "text_encoder": 2500, "*": 3000}),
    3: ({"*": "70%"}, {"*": "70%"}),
    4: ({"transformer": 100, "text_encoder": 100, "*": 3000}, {"transformer": 2500, "text_encoder": 2500, "*": 3000}),
    5: ({"transformer": 100, "text_encoder": 100, "*": 1000}, {"transformer": 2500, "text_encoder": 2500, "*": 2500}),
}


@pytest.mark.parametrize("profile", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("preload", [0, 2500])
def test_profile_receives_the_right_arguments(monkeypatch, profile, preload):
    fake = mock.MagicMock()
    monkeypatch.setattr(offload, "import_mmgp", lambda: fake)
    components = parts()
    options = LoadOptions(profile=profile, preload_mb=preload, compile=profile == 2, vram_safety_coefficient=0.7)
    placement = offload.place(components, options, CUDA, torch.bfloat16)
    fake.profile.assert_called_once()
    (pipe,), kwargs = fake.profile.call_args
    assert pipe == components and all(pipe[k] is components[k] for k in components)
    assert kwargs.pop("profile_no") == profile
    budgets = EXPECTED_BUDGETS[profile][1 if preload else 0]
    assert kwargs.pop("budgets", None) == budgets
    assert kwargs == {"quantizeTransformer": False, "extraModelsToQuantize": None,
                      "convertWeightsFloatTo": torch.bfloat16, "vram_safety_coefficient": 0.7,
                      "compile": "transformer" if profile == 2 else False}
    assert all(p.moved_to is None for p in components.values())  # mmgp places them, not .to()
    assert placement.profile == profile and placement.handle is fake.profile.return_value
    placement.release()
    fake.profile.return_value.release.assert_called_once()


def test_no_profile_chosen_applies_the_suggestion(monkeypatch):
    fake = mock.MagicMock()
    monkeypatch.setattr(offload, "import_mmgp", lambda: fake)
    monkeypatch.setattr(offload, "machine_memory", lambda device: (int(31.3 * GIB), int(11.7 * GIB)))
    assert offload.place(parts(), LoadOptions(), CUDA, torch.bfloat16).profile == 4
    assert fake.profile.call_args.kwargs["profile_no"] == 4
    note = offload.startup_notes(LoadOptions(), CUDA)
    assert len(note) == 1 and "profile 4" in note[0] and "31 GiB RAM, 12 GiB VRAM" in note[0]


@pytest.mark.parametrize("device,profile", [(torch.device("cpu"), 4), (CUDA, 0)])
def test_without_cuda_or_with_profile_0_nothing_is_hooked(monkeypatch, device, profile):
    monkeypatch.setattr(offload, "import_mmgp", mock.Mock(side_effect=AssertionError("mmgp used")))
    components = parts()
    placement = offload.place(components, LoadOptions(profile=profile), device, torch.float32)
    assert placement.profile is None and all(p.moved_to == device for p in components.values())


def test_cpu_note_says_what_is_ignored():
    notes = offload.startup_notes(LoadOptions(profile=3, compile=True), torch.device("cpu"))
    assert len(notes) == 1 and "--profile, --compile ignored" in notes[0] and "running on the CPU" in notes[0]


@pytest.mark.parametrize("ram,vram,expected", [
    (64, 24, 1), (128, 48, 1), (64, 12, 2), (62.8, 11.7, 2), (32, 24, 3), (31.3, 23.6, 3), (32, 12, 4),
    (32, 16, 4), (24, 10, 5), (16, 8, 5), (48, 8, 5),
])
def test_suggested_profile(ram, vram, expected):
    assert offload.suggest_profile(int(ram * GIB), int(vram * GIB)) == expected


def test_profile_table_for_the_ui():
    rows = offload.profile_table()
    assert [r["profile"] for r in rows] == [1, 2, 3, 4, 5]
    assert (rows[3]["ram_gb"], rows[3]["vram_gb"]) == (32, 12) and rows[4]["summary"]


def test_flash_attention_needs_cuda():
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        offload.set_attention(Part(), "flash", torch.device("cpu"))


@pytest.mark.parametrize("changes,words", [
    ({"profile": 7}, "profile 7"), ({"vram_safety_coefficient": 1.0}, "between 0 and 1"),
    ({"preload_mb": -5}, "preload"), ({"transformer_quantization": "int4"}, "transformer quantization"),
    ({"attention": "xformers"}, "attention"),
])
def test_bad_load_options(changes, words):
    with pytest.raises(SettingsError, match=words):
        LoadOptions(**changes).validate()


def test_cli_rejects_a_bad_coefficient_in_one_line(capsys):
    from app.cli import main

    assert main(["models", "--vram-safety-coefficient", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "between 0 and 1" in err[0]


def test_changing_load_options_drops_the_loaded_model(engine):
    s = engine.settings_for("z_image_tiny_test", prompt="x", seed=1, width=256, height=256, num_inference_steps=1)
    engine.generate(s)
    loaded = engine.model
    same = engine.options.replace(attention="sdpa")  # unchanged: kept
    assert engine.load("z_image_tiny_test", options=same) is loaded
    other = engine.options.replace(transformer_quantization="bf16")  # a job asking for other files reloads
    assert engine.load("z_image_tiny_test", options=other) is not loaded
    assert engine.options.transformer_quantization == "auto"  # for that job only: the engine's own are kept
    assert engine.load("z_image_tiny_test") is not engine.load("z_image_tiny_test", options=other)


def test_memory_report_resets_between_stages():
    monitor = MemoryMonitor(torch.device("cpu"))
    with monitor.stage("big"):
        block = torch.ones(300 * 2**20, dtype=torch.uint8)  # 300 MiB, touched
        del block
    with monitor.stage("small"):
        torch.zeros(10)
    report = monitor.as_dict()
    assert report["big"]["peak_ram_bytes"] - report["small"]["peak_ram_bytes"] > 200 * 2**20
    assert "peak_vram_bytes" not in report["big"]
    assert summary(report).startswith("big: RAM ")


def test_importing_mmgp_changes_nothing_and_files_cross_both_ways(tiny_model_json, tmp_path):
    """In a subprocess (mmgp patches the process): same bf16 and INT8 images before and after importing it,
    transformers' from_pretrained still works, and mmgp's INT8 files and ours read each other."""
    json_path, _ = tiny_model_json
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "mmgp_probe.py"), str(json_path), str(tmp_path)],
                       capture_output=True, text=True, timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                                         "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    found = json.loads(r.stdout.strip().splitlines()[-1])
    assert found["mmgp_imported"]
    assert found["bf16_image_unchanged"] and found["int8_image_unchanged"]
    assert found["transformers_from_pretrained"] is True, found["transformers_from_pretrained"]
    assert found["mmgp_file_int8_layers"] > 0 and found["mmgp_file_rel_error"] < 0.05
    assert found["our_file_read_by_mmgp"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_asking_for_cuda_without_it_is_one_clear_error(capsys):
    from app.cli import main

    assert main(["models", "--device", "cuda"]) == 2
    assert "PyTorch sees no CUDA GPU" in capsys.readouterr().err
