"""LoRAs applied without merging, on the tiny transformer: each format changes the output exactly as merging
its delta by hand would; strength 0 and removal give the base output bit for bit; INT8 layers work too."""

import copy

import pytest
import torch

from engine.errors import ModelFileError
from engine.lora.apply import LoraStack
from engine.lora.library import LoraLibrary
from models.z_image.lora import linear_shapes, read_lora
from tests.lora_files import STYLES, LoraWriter, write_style


@pytest.fixture(scope="module")
def transformer(tiny_models):
    return tiny_models["transformer"]


@pytest.fixture(scope="module")
def linears(transformer):
    return linear_shapes(transformer)


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(16, 1, 8, 8, generator=gen)], torch.tensor([0.3]), [torch.randn(7, 32, generator=gen)]


def run(model, inputs):
    x, t, cap = inputs
    with torch.no_grad():
        return model(list(x), t, list(cap), return_dict=False)[0][0]


def load(path, linears, dtype=torch.float32):
    library = LoraLibrary(path.parent)
    return read_lora(library.resolve(path.name), linears, dtype, "cpu")


def merged(transformer, writers_and_strengths):
    """The transformer with each writer's deltas added to the weights by hand."""
    model = copy.deepcopy(transformer)
    with torch.no_grad():
        for w, s in writers_and_strengths:
            for name, delta in w.expected.items():
                module = model.get_submodule(name)
                module.weight += s * delta
                if name in w.expected_bias:
                    bias = w.expected_bias[name] * s
                    if module.bias is None:
                        module.bias = torch.nn.Parameter(bias)
                    else:
                        module.bias += bias
    return model


@pytest.mark.parametrize("style", STYLES)
def test_each_format_equals_merging_by_hand(style, transformer, linears, inputs, tmp_path):
    w = write_style(tmp_path / f"{style}.safetensors", linears, style, seed=STYLES.index(style))
    lora = load(tmp_path / f"{style}.safetensors", linears)
    assert lora.warnings == []
    base = run(transformer, inputs)
    reference = run(merged(transformer, [(w, 0.7)]), inputs)
    stack = LoraStack(transformer)
    stack.activate([lora])
    try:
        stack.set_strengths({lora.name: 0.7})
        out = run(transformer, inputs)
    finally:
        stack.clear()
    assert (reference - base).abs().max() > 1e-2  # the LoRA really changes the output
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_strength_zero_and_removal_give_the_base_bit_for_bit(transformer, linears, inputs, tmp_path):
    write_style(tmp_path / "a.safetensors", linears, "kohya")
    lora = load(tmp_path / "a.safetensors", linears)
    base = run(transformer, inputs)
    stack = LoraStack(transformer)
    stack.activate([lora])
    stack.set_strengths({lora.name: 0.0})
    assert torch.equal(run(transformer, inputs), base)
    stack.set_strengths({lora.name: 1.5})
    assert not torch.equal(run(transformer, inputs), base)
    stack.activate([])
    assert torch.equal(run(transformer, inputs), base)
    assert not any(m._forward_hooks for m in transformer.modules())


def test_two_loras_at_once_with_their_own_strengths(transformer, linears, inputs, tmp_path):
    a = write_style(tmp_path / "a.safetensors", linears, "peft", seed=1)
    b = write_style(tmp_path / "b.safetensors", linears, "comfyui", seed=2,
                    modules=[m for m in linears if m.startswith("layers.")])
    la, lb = load(tmp_path / "a.safetensors", linears), load(tmp_path / "b.safetensors", linears)
    reference = run(merged(transformer, [(a, -1.2), (b, 0.6)]), inputs)
    stack = LoraStack(transformer)
    stack.activate([la, lb])
    try:
        stack.set_strengths({la.name: -1.2, lb.name: 0.6})
        out = run(transformer, inputs)
    finally:
        stack.clear()
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_fused_qkv_lora_reaches_q_k_and_v(transformer, linears, tmp_path):
    w = LoraWriter(linears, seed=5, dtype=torch.bfloat16)  # as such files usually come
    w.fused_qkv("diffusion_model.layers.1.attention.qkv", "layers.1", alpha=2.0)
    w.save(tmp_path / "qkv.safetensors")
    lora = load(tmp_path / "qkv.safetensors", linears)
    assert sorted(lora.adapters) == [f"layers.1.attention.to_{p}" for p in "kqv"]
    x = torch.randn(5, linears["layers.1.attention.to_q"][1])
    stack = LoraStack(transformer)
    for p in "qkv":
        layer = transformer.get_submodule(f"layers.1.attention.to_{p}")
        base = layer(x)
        stack.activate([lora])
        stack.set_strengths({lora.name: 1.0})
        with_lora = layer(x)
        stack.clear()
        expected = x @ w.expected[f"layers.1.attention.to_{p}"].T
        assert expected.abs().max() > 1e-2
        torch.testing.assert_close(with_lora - base, expected, rtol=1e-4, atol=1e-5)


def test_some_unmatched_keys_warn_but_load(transformer, linears, inputs, tmp_path):
    w = LoraWriter(linears, seed=6)
    w.lora("diffusion_model.layers.0.feed_forward.w2", "layers.0.feed_forward.w2", alpha=4.0)
    w.tensors["diffusion_model.layers.9.feed_forward.w2.lora_down.weight"] = torch.zeros(4, 170)
    w.tensors["diffusion_model.layers.9.feed_forward.w2.lora_up.weight"] = torch.zeros(64, 4)
    w.tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"] = torch.tensor(4.0)
    w.save(tmp_path / "partly.safetensors")
    lora = load(tmp_path / "partly.safetensors", linears)
    assert list(lora.adapters) == ["layers.0.feed_forward.w2"]
    (warning,) = lora.warnings
    assert "3 of 6 tensors not applied (1 layer(s) applied)" in warning
    for key in ("diffusion_model.layers.9.feed_forward.w2.lora_down.weight",
                "diffusion_model.layers.9.feed_forward.w2.lora_up.weight",
                "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"):
        assert key in warning


@pytest.mark.parametrize("tensors,words", [
    ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 64),
      "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(192, 4)}, "made for Flux, not Z-Image"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 64),
      "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(64, 4)}, "Stable Diffusion"),
    ({"transformer.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 3840),
      "transformer.layers.0.attention.to_q.lora_B.weight": torch.zeros(3840, 4)}, "another model size"),
    ({"x_embedder.weight": torch.zeros(64, 64), "cap_embedder.1.weight": torch.zeros(64, 32)},
     "whole Z-Image model, not a LoRA"),
])
def test_unusable_files_are_refused_with_the_reason(tensors, words, linears, tmp_path):
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelFileError, match=words):
        load(tmp_path / "bad.safetensors", linears)


def test_bf16_model(transformer, linears, inputs, tmp_path):
    """Adapters take the model's dtype; in bf16 the change still matches merging (at bf16 precision)."""
    w = write_style(tmp_path / "a.safetensors", linears, "kohya", seed=8)
    model = copy.deepcopy(transformer).to(torch.bfloat16)
    lora = load(tmp_path / "a.safetensors", linears, torch.bfloat16)
    x, t, cap = inputs
    bf_inputs = ([x[0].bfloat16()], t, [cap[0].bfloat16()])
    base = run(model, bf_inputs).float()
    stack = LoraStack(model)
    stack.activate([lora])
    out = run(model, bf_inputs).float()
    stack.clear()
    reference = run(merged(transformer, [(w, 1.0)]), inputs)
    assert torch.equal(run(model, bf_inputs).float(), base)
    assert (out - reference).abs().mean() < 0.1 * (reference - run(transformer, inputs)).abs().mean()


def test_int8_quantized_layers(transformer, linears, inputs, tmp_path):
    """On optimum-quanto INT8 QLinear layers the delta is added to the quantized layer's own output."""
    from optimum.quanto import freeze, qint8, quantize
    from optimum.quanto.nn import QLinear

    model = copy.deepcopy(transformer)
    quantize(model, weights=qint8)
    freeze(model)
    layer = model.get_submodule("layers.0.feed_forward.w1")
    assert isinstance(layer, QLinear)
    w = write_style(tmp_path / "a.safetensors", linears, "comfyui", seed=9)
    lora = load(tmp_path / "a.safetensors", linear_shapes(model))
    assert len(lora.adapters) == len(linears)
    x = torch.randn(6, 64)
    base_layer, base = layer(x), run(model, inputs)
    stack = LoraStack(model)
    stack.activate([lora])
    stack.set_strengths({lora.name: 0.5})
    torch.testing.assert_close(layer(x) - base_layer, 0.5 * x @ w.expected["layers.0.feed_forward.w1"].T,
                               rtol=1e-4, atol=1e-5)
    assert not torch.equal(run(model, inputs), base)
    stack.clear()
    assert torch.equal(run(model, inputs), base)
