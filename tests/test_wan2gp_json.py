"""Wan2GP's own model JSONs, as its defaults/z_image*.json ship (transcribed below with Wan2GP's field names and
values), pointed at a checkpoints folder in Wan2GP's ckpts/ layout: every type is listed with its files present
and generates (the Nunchaku ones are refused with what they need on this CPU-only machine); fields with no
meaning here are listed once as ignored."""

import json

import numpy as np
import pytest
from safetensors.torch import save_file

from engine.engine import Engine
from engine.errors import ModelFileError
from engine.registry import ROOT, Registry
from engine.weights.assign import state_dict_for_file
from engine.weights.files import FileLocator
from models import families
from models.z_image import tiny
from tests import layouts
from tests.test_nunchaku import write_svdq

HUB = "https://huggingface.co/DeepBeepMeep/Z-Image/resolve/main/"


def _type(name, arch, urls, settings, **model):
    return {"model": {"name": name, "architecture": arch, "description": f"{name} (Wan2GP)", "URLs": urls, **model},
            **settings}


def _pair(stem):
    return [f"{HUB}{stem}_bf16.safetensors", f"{HUB}{stem}_quanto_bf16_int8.safetensors"]


# Wan2GP's defaults/z_image*.json (fields and values as it ships them; descriptions shortened)
WAN2GP_DEFAULTS = {
    "z_image": _type("Z-Image Turbo 6B", "z_image", _pair("ZImageTurbo"),
                     {"resolution": "1024x1024", "batch_size": 1, "num_inference_steps": 8, "guidance_scale": 0}),
    "z_image_base": _type("Z-Image Base 6B", "z_image_base", _pair("ZImageBase"),
                          {"resolution": "1024x1024", "batch_size": 1, "num_inference_steps": 30},
                          attention={"<89": "sdpa"}),
    "z_image_control": _type("Z-Image Turbo Fun ControlNet v1 6B", "z_image_control", "z_image",
                             {"resolution": "1024x1024", "batch_size": 1, "num_inference_steps": 9,
                              "guidance_scale": 0, "control_net_weight_alt": 0.75},
                             modules=[_pair("Z-Image-Turbo-Fun-Controlnet-Union")]),
    "z_image_control2": _type("Z-Image Turbo Fun ControlNet v2 6B", "z_image_control2", "z_image",
                              {"resolution": "1024x1024", "batch_size": 1, "num_inference_steps": 9,
                               "guidance_scale": 0, "control_net_weight_alt": 0.75},
                              modules=[_pair("Z-Image-Turbo-Fun-Controlnet-Union2")]),
    "z_image_control2_1": _type("Z-Image Turbo Fun ControlNet v2.1 6B", "z_image_control2_1", "z_image",
                                {"resolution": "1920x1088", "batch_size": 1, "num_inference_steps": 9,
                                 "guidance_scale": 0, "control_net_weight_alt": 0.65},
                                modules=[_pair("Z-Image-Turbo-Fun-Controlnet-Union2.1")]),
    "z_image_control2_1_8s": _type("Z-Image Turbo Fun ControlNet v2.1 8 Steps YYY 6B", "z_image_control2_1",
                                   "z_image", {"resolution": "1920x1088", "batch_size": 1, "num_inference_steps": 8,
                                               "guidance_scale": 0, "control_net_weight_alt": 0.65},
                                   modules=[[f"{HUB}Z-Image-Turbo-Fun-Controlnet-Tile-2.1-2601-8_steps_bf16.safetensors",
                                             f"{HUB}Z-Image-Turbo-Fun-Controlnet-Union2.1-8steps_quanto_bf16_int8"
                                             ".safetensors"]], visible=False),
    "z_image_nunchaku_r128_fp4": _type("Z-Image Turbo Nunchaku FP4 (r128) 6B", "z_image",
                                       [f"{HUB}svdq-fp4_r128-z-image-turbo.safetensors"],
                                       {"resolution": "1024x1024", "batch_size": 1, "num_inference_steps": 8,
                                        "guidance_scale": 0}),
    "z_image_nunchaku_r256_int4": _type("Z-Image Turbo Nunchaku INT4 (r256) 6B", "z_image",
                                        [f"{HUB}svdq-int4_r256-z-image-turbo.safetensors"],
                                        {"resolution": "1024x1024", "batch_size": 1, "num_inference_steps": 8,
                                         "guidance_scale": 0}),
    "z_image_twinflow_turbo": _type("TwinFlow Z-Image Turbo 6B", "z_image", _pair("TwinFlow-Z-Image-Turbo"),
                                    {"resolution": "1024x1024", "batch_size": 1, "num_inference_steps": 2,
                                     "guidance_scale": 0}, unified_solver=True),
}
CONTROL_FILES = {"Z-Image-Turbo-Fun-Controlnet-Union_bf16.safetensors": "1.0",
                 "Z-Image-Turbo-Fun-Controlnet-Union2_bf16.safetensors": "2.0",
                 "Z-Image-Turbo-Fun-Controlnet-Union2.1_bf16.safetensors": "2.1",
                 "Z-Image-Turbo-Fun-Controlnet-Tile-2.1-2601-8_steps_bf16.safetensors": "2.1"}


@pytest.fixture(scope="module")
def wan2gp(tmp_path_factory):
    """Wan2GP's JSONs in a defaults/ folder and tiny models under Wan2GP's file names in its ckpts/ layout."""
    root = tmp_path_factory.mktemp("wan2gp")
    defaults, ck = root / "defaults", root / "ckpts"
    defaults.mkdir()
    (ck / "Qwen3").mkdir(parents=True)
    for name, data in WAN2GP_DEFAULTS.items():
        (defaults / f"{name}.json").write_text(json.dumps(data, indent=4))
    shape = dict(n_layers=4, refiner_layers=2)
    turbo = tiny.make_transformer(**shape)
    layouts.write_wan2gp(ck / "ZImageTurbo_bf16.safetensors", turbo)
    layouts.write_wan2gp(ck / "ZImageBase_bf16.safetensors", tiny.make_transformer(seed=4, **shape))
    layouts.write_wan2gp(ck / "TwinFlow-Z-Image-Turbo_bf16.safetensors", tiny.make_transformer(twinflow=True, **shape))
    for file, version in CONTROL_FILES.items():
        control = tiny.make_control(turbo, version, 2)
        save_file(state_dict_for_file(control), str(ck / file))
        if version == "2.0":  # Wan2GP's INT8 control module (quanto layers in the control blocks)
            layouts.write_wan2gp_int8(ck / file.replace("_bf16", "_quanto_bf16_int8"), control,
                                      stacks=("control_layers.", "control_noise_refiner."))
    layouts.write_wan2gp_int8(ck / "ZImageTurbo_quanto_bf16_int8.safetensors", turbo)
    save_file({k: v.bfloat16() for k, v in state_dict_for_file(tiny.make_text_encoder()).items()},
              str(ck / "Qwen3" / "qwen3_bf16.safetensors"))
    tiny.make_tokenizer().save_pretrained(str(ck / "Qwen3"))
    save_file(state_dict_for_file(tiny.make_vae()), str(ck / "ZImageTurbo_VAE_bf16.safetensors"))
    write_svdq(ck / "svdq-int4_r256-z-image-turbo.safetensors")
    write_svdq(ck / "svdq-fp4_r128-z-image-turbo.safetensors", "fp4", 128)
    return root


def test_every_type_is_listed_with_its_files_present(wan2gp, capsys):
    from app.cli import main

    ck = wan2gp / "ckpts"
    assert main(["models", "--finetunes", str(wan2gp / "defaults"), "--checkpoints", str(ck)]) == 0
    out = capsys.readouterr().out
    blocks, current = {}, None
    for line in out.splitlines():  # a type's line, then its indented lines
        if not line.startswith(" "):
            current = line.split(":")[0]
        blocks[current] = blocks.get(current, "") + line + "\n"
    for name in WAN2GP_DEFAULTS:
        block = blocks[name]
        assert "missing" not in block and "problem" not in block, block
        for part in ("text_encoder", "vae", "tokenizer"):
            assert f"{part}" in block
        assert f"present  {ck / 'Qwen3' / 'qwen3_bf16.safetensors'}" in block
        assert f"present  {ck / 'ZImageTurbo_VAE_bf16.safetensors'}" in block
    assert "(z_image_twinflow_turbo)" in blocks["z_image_twinflow_turbo"]
    assert "[nunchaku int4 r256]" in blocks["z_image_nunchaku_r256_int4"]
    assert f"present  {ck / 'Z-Image-Turbo-Fun-Controlnet-Tile-2.1-2601-8_steps_bf16.safetensors'}" \
        in blocks["z_image_control2_1_8s"]
    # listed once per type, not refused: Wan2GP's unused UI setting and its UI hint
    assert blocks["z_image_control2_1"].count("control_net_weight_alt") == 1
    assert "visible" in blocks["z_image_control2_1_8s"]


@pytest.fixture(scope="module")
def engine(wan2gp):
    registry = Registry(families(), (ROOT / "defaults", wan2gp / "defaults"))
    return Engine(registry, FileLocator(wan2gp / "ckpts", offline=True))


@pytest.mark.parametrize("name", [n for n in WAN2GP_DEFAULTS if "nunchaku" not in n])
def test_every_type_generates(engine, name):
    settings = engine.settings_for(name, prompt="a lighthouse at dusk", seed=1, width=256, height=256,
                                   num_inference_steps=2)
    model_def = engine.registry.get(name)
    image = np.asarray(engine.generate(settings)[0].image)
    assert image.shape == (256, 256, 3) and image.std() > 0
    assert engine.model.files["text_encoder"].endswith("Qwen3/qwen3_bf16.safetensors")
    if name == "z_image_twinflow_turbo":
        assert model_def.architecture == "z_image_twinflow_turbo" and settings.sampler == "twinflow"
        assert hasattr(engine.model.transformer, "t_embedder_2")
    if name.startswith("z_image_control"):
        assert engine.model.control is not None and engine.model.files["control"].endswith("_bf16.safetensors")
    if name == "z_image_control2_1":
        assert engine.registry.default_settings(name).width == 1920  # Wan2GP's "resolution" is read


def test_int8_files_generate_with_an_int8_control_module(wan2gp):
    from engine.load_options import LoadOptions
    from engine.weights import quantization as Q

    registry = Registry(families(), (ROOT / "defaults", wan2gp / "defaults"))
    engine = Engine(registry, FileLocator(wan2gp / "ckpts", offline=True),
                    options=LoadOptions(transformer_quantization="int8"))
    settings = engine.settings_for("z_image_control2", prompt="a test", seed=1, width=256, height=256,
                                   num_inference_steps=2)
    assert np.asarray(engine.generate(settings)[0].image).std() > 0
    assert engine.model.files["control"].endswith("Union2_quanto_bf16_int8.safetensors")
    assert Q.int8_modules_of(engine.model.control.net) and engine.model.load_info["transformer"] == "int8"


@pytest.mark.parametrize("name,words", [("z_image_nunchaku_r256_int4", "SVDQ int4 \\(rank 256\\).*nunchaku package"),
                                        ("z_image_nunchaku_r128_fp4", "SVDQ fp4 \\(rank 128\\).*RTX 50xx")])
def test_nunchaku_types_say_what_they_need(engine, name, words):
    settings = engine.settings_for(name, prompt="a test", width=256, height=256, num_inference_steps=1)
    with pytest.raises(ModelFileError, match=words):
        engine.generate(settings)


def test_wan2gp_setting_names_and_solvers_are_read(tmp_path):
    """NAG_*, control_net_weight, repeat_generation and sample_solver as Wan2GP's settings spell them."""
    data = {"model": {"architecture": "z_image", "URLs": "z_image"}, "NAG_scale": 4.0, "NAG_tau": 3.5,
            "NAG_alpha": 0.5, "repeat_generation": 2, "sample_solver": "default", "video_length": 81}
    (tmp_path / "mine.json").write_text(json.dumps(data))
    control = {"model": {"architecture": "z_image_control", "URLs": "z_image", "modules": ["z_image_control"]},
               "control_net_weight": 0.6}
    (tmp_path / "mine_control.json").write_text(json.dumps(control))
    reg = Registry(families(), (ROOT / "defaults", tmp_path))
    s = reg.default_settings("mine")
    assert (s.nag_scale, s.nag_tau, s.nag_alpha, s.count, s.sampler) == (4.0, 3.5, 0.5, 2, "euler")
    assert reg.get("mine").ignored == [f"{tmp_path / 'mine.json'}: settings: ignored (no meaning in this app): "
                                       "video_length"]
    assert reg.default_settings("mine_control").control_weight == 0.6
    assert reg.get("mine_control").model["modules"] == reg.get("z_image_control").model["modules"]


def test_attention_map_per_gpu_generation():
    """Wan2GP's `attention` map: generation = compute capability x 10; '+' or, '&' and."""
    from engine.wan2gp import attention_for

    rule = {"<89": "sdpa", ">=120": "sage", "80&<89": "flash"}
    assert attention_for(rule, (8, 6)) == "sdpa" and attention_for(rule, (8, 9)) is None
    assert attention_for(rule, (12, 0)) == "sage" and attention_for(rule, None) is None
    assert attention_for({"75+86": "flash"}, (8, 6)) == "flash" and attention_for({"75+86": "flash"}, (8, 0)) is None
