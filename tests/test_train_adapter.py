"""The Turbo training adapter: found or downloaded like any component, attached at +1 by hooks, and removing
it restores the model bit for bit (bf16/fp32 and INT8 bases alike); training on an INT8 base."""

import json

import pytest
import torch

from engine.engine import Engine
from engine.errors import DownloadError, UserError
from engine.registry import Registry
from engine.training.run import train
from engine.training.settings import TrainSettings
from engine.weights.files import FileLocator
from models import families
from tests import layouts
from tests.train_data import MODEL, Ctx, two_images, write_adapter

INT8 = "z_image_tiny_int8"


@pytest.fixture(scope="module")
def int8_engine(tmp_path_factory, tiny_model_json, tiny_models):
    """The tiny model type with its transformer as a Wan2GP-layout INT8 file."""
    json_path, _ = tiny_model_json
    root = tmp_path_factory.mktemp("int8train")
    tr = layouts.write_wan2gp_int8(root / "ZImageTiny_quanto_bf16_int8.safetensors", tiny_models["transformer"])
    data = json.loads(json_path.read_text())
    data["model"]["URLs"] = str(tr)
    (root / f"{INT8}.json").write_text(json.dumps(data))
    return Engine(Registry(families(), extra_files=[root / f"{INT8}.json"]), FileLocator(root / "ckpts", offline=True))


def backend(engine, model_type=MODEL):
    model_def = engine.registry.get(model_type)
    return engine.registry.handler(model_type).training_backend(model_def, engine.locator, engine.options,
                                                                  engine.dtype, engine.device)


def run(transformer):
    gen = torch.Generator().manual_seed(3)
    x, cap = [torch.randn(16, 1, 8, 8, generator=gen)], [torch.randn(7, 32, generator=gen)]
    with torch.no_grad():
        return transformer(x, torch.tensor([0.4]), cap, return_dict=False)[0][0]


def raw_state(transformer) -> dict:
    """Every weight's bytes, INT8 layers' data and scales included."""
    out = {}
    for name, t in transformer.state_dict().items():
        parts = {"_data": t._data, "_scale": t._scale} if hasattr(t, "_data") else {"": t}
        out.update({name + k: v.detach().clone() for k, v in parts.items()})
    return out


@pytest.mark.parametrize("model_type", [MODEL, INT8])
def test_adapter_attached_then_removed_leaves_the_model_bit_identical(engine, int8_engine, tmp_path, model_type):
    eng = int8_engine if model_type == INT8 else engine
    b = backend(eng, model_type)
    transformer = b.load_transformer()
    before_weights, before_out = raw_state(transformer), run(transformer)
    b.attach_adapter(write_adapter(tmp_path / "adapter.safetensors", transformer))
    with_adapter = run(transformer)
    assert (with_adapter - before_out).abs().max() > 1e-3  # it is applied at +1 ...
    b.adapter_strength(0.0)
    assert torch.equal(run(transformer), before_out)  # ... strength 0 is exactly without it ...
    b.adapter_strength(1.0)
    assert torch.equal(run(transformer), with_adapter)
    b.detach_adapter()
    after = raw_state(transformer)  # ... and removing it leaves every weight as it was
    assert after.keys() == before_weights.keys()
    assert all(torch.equal(after[k], before_weights[k]) for k in after)
    assert torch.equal(run(transformer), before_out)
    if model_type == INT8:
        from optimum.quanto import QLinear

        assert isinstance(transformer.layers[0].attention.to_q, QLinear)


def test_adapter_choice_hub_file_local_file_or_none(engine, tmp_path, monkeypatch):
    b = backend(engine)
    with pytest.raises(DownloadError, match="zimage_turbo_training_adapter_v1.safetensors from "
                                            "ostris/zimage_turbo_training_adapter"):
        b.adapter_file("auto")  # Turbo: v1 by default; offline here and not on disk
    monkeypatch.setattr(b.locator, "checkpoints", tmp_path)
    (tmp_path / "zimage_turbo_training_adapter_v2.safetensors").write_bytes(b"x")
    path, notes = b.adapter_file("v2")
    assert path == tmp_path / "zimage_turbo_training_adapter_v2.safetensors" and notes == []
    with pytest.raises(UserError, match="give v1, v2, none, or a .safetensors file"):
        b.adapter_file(str(tmp_path / "missing.safetensors"))
    assert b.adapter_file("none")[0] is None


def test_training_on_an_int8_base_leaves_it_untouched(int8_engine, tmp_path, tiny_models):
    int8_engine.lora_dirs["z_image"] = tmp_path / "loras"
    data = two_images(tmp_path / "data")
    adapter = write_adapter(tmp_path / "adapter.safetensors", tiny_models["transformer"])
    s = TrainSettings(name="int8", images=str(data), model_type=INT8, trigger="zzt", steps=3, rank=2,
                      learning_rate=1e-2, resolutions=(256,), save_every=0, sample_every=0, adapter=str(adapter),
                      output_dir=str(tmp_path / "training"))
    from engine.training.run import finish, prepare

    run_ = prepare(int8_engine, s, Ctx())
    transformer = run_.backend.transformer
    before = raw_state(transformer)
    run_.loop.guarded()
    result = finish(run_, Ctx())
    assert result.steps == 3 and all(v == v for v in result.history)
    after = raw_state(transformer)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert any(float(p.detach().abs().max()) > 0 for p in run_.loop.lora.up)  # the LoRA itself did learn


def test_other_architectures_are_refused_clearly(engine, monkeypatch, tmp_path):
    monkeypatch.setitem(engine.registry.types[MODEL].model, "architecture", "z_image_twinflow_turbo")
    s = TrainSettings(name="x", images=str(two_images(tmp_path / "d")), model_type=MODEL, output_dir=str(tmp_path))
    monkeypatch.setitem(engine.lora_dirs, "z_image", tmp_path / "loras")
    with pytest.raises(UserError, match="not available for the z_image_twinflow_turbo architecture"):
        train(engine, s, Ctx())
