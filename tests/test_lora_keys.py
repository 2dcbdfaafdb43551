"""LoRA key mapping, on names and shapes only: every trainer's spelling lands on the right Z-Image layer."""

import json

import pytest
import torch

from engine.lora.format import group_keys, peft_alpha
from models.z_image import lora_keys as LK
from tests.lora_files import STYLES, write_style


@pytest.fixture(scope="module")
def linears(tiny_models):
    from models.z_image.lora import linear_shapes

    return linear_shapes(tiny_models["transformer"])


def shapes_of(writer):
    return {k: tuple(v.shape) for k, v in writer.tensors.items()}


@pytest.mark.parametrize("style", STYLES)
def test_every_style_maps_every_key(style, linears, tmp_path):
    w = write_style(tmp_path / "l.safetensors", linears, style)
    plan = LK.plan(shapes_of(w), linears)
    assert plan.skipped == []
    assert {t.module for e in plan.entries for t in e.targets} == set(w.expected) == set(linears)


def test_fused_qkv_splits_by_rows(linears, tmp_path):
    w = write_style(tmp_path / "l.safetensors", linears, "comfyui", modules=["layers.0.attention.to_q"])
    entry = next(e for e in LK.plan(shapes_of(w), linears).entries if e.group.stem.endswith(".qkv"))
    q, k, v = (linears[f"layers.0.attention.to_{p}"][0] for p in "qkv")
    assert [(t.module, t.rows) for t in entry.targets] == [
        ("layers.0.attention.to_q", (0, q)), ("layers.0.attention.to_k", (q, q + k)),
        ("layers.0.attention.to_v", (q + k, q + k + v))]


def test_layer_given_twice_is_applied_once(linears, tmp_path):
    """Some trainers write a fused qkv (and `out`) beside split to_q/k/v (and `to_out.0`): the split wins."""
    mods = [f"layers.0.attention.to_{p}" for p in ("q", "k", "v", "out.0")]
    split = write_style(tmp_path / "a.safetensors", linears, "aitoolkit", modules=mods)
    fused = write_style(tmp_path / "b.safetensors", linears, "comfyui", modules=mods)
    plan = LK.plan({**shapes_of(split), **shapes_of(fused)}, linears)
    modules = [t.module for e in plan.entries for t in e.targets]
    assert sorted(modules) == sorted(mods)  # each once
    assert all(e.group.stem.startswith("diffusion_model.layers.0.attention.to_") for e in plan.entries)
    skipped = {k for k, why in plan.skipped if why.startswith("duplicate of")}
    assert "diffusion_model.layers.0.attention.qkv.lora_down.weight" in skipped
    assert "diffusion_model.layers.0.attention.out.lora_up.weight" in skipped
    kohya = write_style(tmp_path / "c.safetensors", linears, "kohya", modules=mods)
    kohya_fused = write_style(tmp_path / "d.safetensors", linears, "kohya_fused", modules=mods)
    plan = LK.plan({**shapes_of(kohya), **shapes_of(kohya_fused)}, linears)
    assert sorted(e.group.stem for e in plan.entries) == sorted(f"lora_unet_{m.replace('.', '_')}" for m in mods)


def test_unmatched_keys_come_with_reasons(linears):
    shapes = {
        "transformer.layers.0.attention.to_q.lora_A.weight": (4, 64),
        "transformer.layers.0.attention.to_q.lora_B.weight": (64, 4),
        "transformer.layers.7.attention.to_q.lora_A.weight": (4, 64),  # no layer 7
        "transformer.layers.7.attention.to_q.lora_B.weight": (64, 4),
        "text_encoder.model.layers.0.self_attn.q_proj.lora_A.weight": (4, 32),
        "text_encoder.model.layers.0.self_attn.q_proj.lora_B.weight": (32, 4),
        "transformer.layers.0.attention.to_k.lora_A.weight": (4, 3840),  # made for the 6B model
        "transformer.layers.0.attention.to_k.lora_B.weight": (3840, 4),
        "transformer.layers.0.attention.to_v.lora_A.weight": (4, 64),  # no up
        "transformer.layers.0.feed_forward.w1.lora_A.weight": (4, 64),
        "transformer.layers.0.feed_forward.w1.lora_B.weight": (170, 4),
        "transformer.layers.0.feed_forward.w1.dora_scale": (170, 1),
        "some_step_counter": (1,),
    }
    plan = LK.plan(shapes, linears)
    assert [e.group.stem for e in plan.entries] == ["transformer.layers.0.attention.to_q"]
    why = dict(plan.skipped)
    assert why["transformer.layers.7.attention.to_q.lora_A.weight"] == "matches no layer of this model"
    assert "text-encoder" in why["text_encoder.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert "another model size" in why["transformer.layers.0.attention.to_k.lora_A.weight"]
    assert "incomplete" in why["transformer.layers.0.attention.to_v.lora_A.weight"]
    assert "DoRA" in why["transformer.layers.0.feed_forward.w1.lora_B.weight"]
    assert why["some_step_counter"] == "not a LoRA tensor"
    assert len(plan.skipped) == len(shapes) - 2


@pytest.mark.parametrize("keys,family", [
    (["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"], "Flux"),
    (["transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight"], "Flux"),
    (["lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight",
      "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"], "Stable Diffusion XL"),
    (["lora_unet_input_blocks_4_1_proj_in.lora_down.weight"], "Stable Diffusion 1.x/2.x/XL"),
    (["diffusion_model.blocks.0.self_attn.q.lora_down.weight"], "Wan"),
    (["transformer.transformer_blocks.0.img_mlp.net.0.proj.lora_A.weight"], "Qwen-Image"),
    (["diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_down.weight"], "Stable Diffusion 3"),
    (["diffusion_model.layers.0.adaLN_modulation.1.lora_down.weight"], "Lumina 2"),
    (["transformer.layers.0.attention.to_q.lora_A.weight", "diffusion_model.layers.0.attention.qkv.alpha",
      "lora_unet_layers_0_feed_forward_w1.lora_down.weight",
      "diffusion_model.all_final_layer.2-1.adaLN_modulation.1.lora_A.weight"], None),
])
def test_other_families_are_named(keys, family):
    assert LK.foreign_family(keys) == family


def test_peft_metadata_alpha_patterns():
    meta = {"lora_adapter_metadata": json.dumps({"transformer.lora_alpha": 8, "transformer.r": 4,
                                                 "transformer.alpha_pattern": {"attention.to_q": 2}})}
    alpha = peft_alpha(meta)
    assert alpha("layers.0.attention.to_k", 4) == 8
    assert alpha("layers.0.attention.to_q", 4) == 2
    rs = peft_alpha({"lora_adapter_metadata": json.dumps({"lora_alpha": 8, "use_rslora": True})})
    assert rs("x", 16) / 16 == pytest.approx(8 / 16 ** 0.5)  # rsLoRA: alpha / sqrt(rank)
    assert peft_alpha({}) is None and peft_alpha({"lora_adapter_metadata": "not json"}) is None


def test_group_keys_longest_suffix_wins():
    groups, loose = group_keys(["a.lora_B.default.weight", "a.lora_A.default.weight", "b.lokr_w2_b", "b.lokr_w2_a",
                                "b.lokr_w1", "c.weight"])
    assert groups["a"].roles == {"up": "a.lora_B.default.weight", "down": "a.lora_A.default.weight"}
    assert groups["a"].kind == "lora" and groups["b"].kind == "lokr"
    assert loose == ["c.weight"]


def test_full_size_lora_fits_the_real_model(tmp_path):
    """A rank-1 LoRA with the 6B model's shapes maps fully onto the meta-built 6B transformer."""
    from safetensors.torch import save_file

    from models.z_image.lora import describe_file, full_size_linears

    real = full_size_linears()
    assert real["layers.29.attention.to_q"] == (3840, 3840) and real["layers.0.feed_forward.w1"] == (10240, 3840)
    tensors = {}
    for block in ("layers.0", "layers.29", "noise_refiner.1"):
        tensors[f"diffusion_model.{block}.attention.qkv.lora_down.weight"] = torch.zeros(1, 3840, dtype=torch.float16)
        tensors[f"diffusion_model.{block}.attention.qkv.lora_up.weight"] = torch.zeros(11520, 1, dtype=torch.float16)
    tensors["diffusion_model.layers.30.attention.out.lora_down.weight"] = torch.zeros(1, 3840, dtype=torch.float16)
    tensors["diffusion_model.layers.30.attention.out.lora_up.weight"] = torch.zeros(3840, 1, dtype=torch.float16)
    save_file(tensors, str(tmp_path / "real.safetensors"))
    text = describe_file(tmp_path / "real.safetensors")
    assert text == "LoRA, rank 1, 4 layers; 2 tensor(s) would not be applied"
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(1, 4)},
              str(tmp_path / "flux.safetensors"))
    assert "made for Flux" in describe_file(tmp_path / "flux.safetensors")
