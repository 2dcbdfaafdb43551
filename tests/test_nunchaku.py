"""Nunchaku SVDQ files: recognised; loaded through the nunchaku package (here a stand-in module: the real one
needs CUDA kernels) with the right arguments where it and a supported GPU are present; otherwise refused with
what is needed."""

import json
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from engine.errors import ModelFileError
from engine.weights import formats
from models.z_image import loader, nunchaku


def write_svdq(path, precision="int4", rank=256):
    """The layout of nunchaku's files: fused to_qkv with 4-bit `qweight` (int8 pairs), group scales, smoothing and
    the low-rank branch; the model config and quantization config in the header."""
    dim, rows = 64, 192
    prefix = "layers.0.attention.to_qkv."
    t = {prefix + "qweight": torch.zeros(rows, dim // 2, dtype=torch.int8),
         prefix + "wscales": torch.ones(dim // 64, rows, dtype=torch.bfloat16),
         prefix + "smooth_factor": torch.ones(dim, dtype=torch.bfloat16),
         prefix + "smooth_factor_orig": torch.ones(dim, dtype=torch.bfloat16),
         prefix + "proj_down": torch.zeros(dim, rank, dtype=torch.bfloat16),
         prefix + "proj_up": torch.zeros(rows, rank, dtype=torch.bfloat16),
         "all_x_embedder.2-1.weight": torch.zeros(dim, 64, dtype=torch.bfloat16)}
    if precision == "fp4":
        t[prefix + "wtscale"] = torch.ones((), dtype=torch.float32)
        t[prefix + "wcscales"] = torch.ones(rows, dtype=torch.bfloat16)
    dtype = "fp4_e2m1_all" if precision == "fp4" else "int4"
    meta = {"config": json.dumps({"dim": dim}), "quantization_config": json.dumps(
        {"method": "svdquant", "weight": {"dtype": dtype, "scale_dtype": None, "group_size": 64}, "rank": rank})}
    save_file(t, str(path), metadata=meta)
    return path


@pytest.fixture()
def fake_nunchaku(monkeypatch):
    calls = []

    class NunchakuZImageTransformer2DModel:
        @classmethod
        def from_pretrained(cls, path, **kwargs):
            calls.append((path, kwargs))
            return torch.nn.Linear(2, 2)

    module = types.ModuleType("nunchaku")
    module.NunchakuZImageTransformer2DModel = NunchakuZImageTransformer2DModel
    monkeypatch.setitem(sys.modules, "nunchaku", module)
    return calls


def gpu(monkeypatch, capability):
    monkeypatch.setattr(nunchaku, "device_capability", lambda device: capability)


def test_recognised(tmp_path):
    path = write_svdq(tmp_path / "svdq-int4_r256-z-image-turbo.safetensors")
    assert formats.describe(path) == "nunchaku int4 r256"
    assert formats.kind_from_name("svdq-fp4_r128-z-image-turbo.safetensors") == "nunchaku"
    renamed = write_svdq(tmp_path / "mine.safetensors", "fp4", 128)
    assert formats.describe(renamed) == "nunchaku fp4 r128"


def test_refused_without_the_package_naming_what_is_needed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nunchaku", None)  # importing it fails, as when it is not installed
    monkeypatch.setitem(sys.modules, "nunchaku.models.transformers.transformer_zimage", None)
    path = write_svdq(tmp_path / "svdq-int4_r256-z-image-turbo.safetensors")
    with pytest.raises(ModelFileError, match=r"SVDQ int4 \(rank 256\).*nunchaku package.*NVIDIA GPU.*bf16, INT8"):
        loader.load_transformer(path, {}, torch.bfloat16, torch.device("cpu"))


def test_loaded_through_nunchaku_with_the_right_arguments(tmp_path, monkeypatch, fake_nunchaku):
    path = write_svdq(tmp_path / "svdq-int4_r256-z-image-turbo.safetensors")
    gpu(monkeypatch, (8, 9))
    model = loader.load_transformer(path, {}, torch.bfloat16, torch.device("cuda", 0))
    assert fake_nunchaku == [(str(path), {"torch_dtype": torch.bfloat16, "device": "cuda:0"})]
    assert model.is_nunchaku and model.weight_kind == "nunchaku"
    with pytest.raises(ModelFileError, match="bfloat16 or float16"):
        loader.load_transformer(path, {}, torch.float32, torch.device("cuda"))


@pytest.mark.parametrize("precision,capability,words", [
    ("int4", None, "an NVIDIA GPU"),
    ("int4", (6, 1), "Turing, Ampere or Ada"),
    ("int4", (12, 0), "the fp4 file on an RTX 50xx"),
    ("fp4", (8, 9), "RTX 50xx"),
])
def test_refused_on_a_gpu_its_kernels_do_not_support(tmp_path, monkeypatch, fake_nunchaku, precision, capability,
                                                     words):
    path = write_svdq(tmp_path / f"svdq-{precision}_r128-z-image-turbo.safetensors", precision, 128)
    gpu(monkeypatch, capability)
    with pytest.raises(ModelFileError, match=words):
        loader.load_transformer(path, {}, torch.bfloat16, torch.device("cuda"))
    assert not fake_nunchaku


def test_unrelated_pypi_package_is_not_taken_for_nunchaku(monkeypatch):
    """PyPI's `nunchaku` is another project (piece-wise linear segments): no Z-Image class, so still 'missing'."""
    monkeypatch.setitem(sys.modules, "nunchaku", types.ModuleType("nunchaku"))
    monkeypatch.setitem(sys.modules, "nunchaku.models.transformers.transformer_zimage", None)
    assert nunchaku.nunchaku_class() is None
    assert nunchaku.problems("int4", None)[0].startswith("the nunchaku package")
