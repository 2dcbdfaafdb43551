"""Image to LoRA on tiny models in the released layouts: the LoRA is the stated math for 1 and 3 pictures; the
app accepts exactly the released key layouts (DiffSynth's registry hashes); the file loads in diffusers, in this
app (and keys ComfyUI maps); it is never overwritten; memory modes and Stop."""

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.errors import Interrupted, SettingsError, UserError
from engine.weights.files import FileLocator
from models.z_image.i2l import encoders as E
from models.z_image.i2l import hypernet as H
from models.z_image.i2l import run as R
from models.z_image.i2l import tiny
from models.z_image.i2l.identify import DINOV3, SIGLIP2
from tests.i2l_files import reference_lora, reference_vector, write_picture


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Tiny encoders and hypernetwork (kept in memory for the reference) written in DiffSynth's layout."""
    folder = tmp_path_factory.mktemp("i2l")
    s, d = tiny.siglip(), tiny.dinov3()
    hyper = tiny.hypernetwork_tensors(s.config.hidden_size + d.config.hidden_size)
    paths = tiny.write_files(folder / "ckpts", "diffsynth", siglip_model=s, dinov3_model=d, hyper=hyper)
    pictures = [write_picture(folder / f"p{i}.png", size, seed=i)
                for i, size in enumerate([(320, 240), (200, 500), (640, 641)])]
    return {"folder": folder, "siglip": s, "dinov3": d, "hyper": hyper, "paths": paths, "pictures": pictures,
            "locator": FileLocator(folder / "ckpts", offline=True)}


def make(kit, pictures, name, memory="auto", dtype="float32", report=None, folder=None):
    req = R.prepare(pictures, name, folder or kit["folder"] / "loras", kit["locator"], memory=memory, dtype=dtype)
    return R.make_lora(req, kit["locator"], "cpu", report)


@pytest.mark.parametrize("count", [1, 3])
def test_lora_is_the_stated_math(kit, count):
    pictures = kit["pictures"][:count]
    result = make(kit, pictures, f"math{count}")
    x = reference_vector(pictures, kit["siglip"], kit["dinov3"])
    assert x.shape == (count, 192 + 256)
    expected = reference_lora(kit["hyper"], x)
    got = load_file(str(result.path))
    assert len(got) == 2 * len(expected) == 2 * (7 * 2 + 7 + 7)
    for module, (a, b) in expected.items():
        assert a.shape == (4 * count, a.shape[1]) and b.shape == (b.shape[0], 4 * count)
        torch.testing.assert_close(got[f"transformer.{module}.lora_A.weight"], a, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got[f"transformer.{module}.lora_B.weight"], b, rtol=1e-4, atol=1e-6)
    if count == 3:  # the average of the three pictures' deltas
        one = [reference_lora(kit["hyper"], x[i:i + 1])["layers.1.feed_forward.w2"] for i in range(3)]
        a, b = expected["layers.1.feed_forward.w2"]
        torch.testing.assert_close(b @ a, sum(bb @ aa for aa, bb in one) / 3, rtol=1e-4, atol=1e-6)
        assert not torch.allclose(one[0][1] @ one[0][0], one[1][1] @ one[1][0])  # pictures differ


def test_file_records_pictures_files_and_defaults(kit):
    result = make(kit, kit["pictures"][:2], "records")
    with safe_open(str(result.path), "pt") as f:
        meta = f.metadata()
    pictures = json.loads(meta["i2l.pictures"])
    assert [p["sha256"] for p in pictures] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in kit["pictures"][:2]]
    files = json.loads(meta["i2l.files"])
    assert files[SIGLIP2]["file"] == "SigLIP2-G384/model.safetensors"
    assert files[DINOV3]["bytes"] == kit["paths"][DINOV3].stat().st_size
    assert meta["studio.positive_only"] == "true"
    assert json.loads(meta["studio.recommended_settings"]) == {"model_type": "z_image_base", "guidance_scale": 4.0,
                                                               "flow_shift": 8.0, "num_inference_steps": 50}
    assert result.rank == 8 and result.layers == 28


# ---- the released layouts, checked against DiffSynth-Studio's registry (md5 of sorted "key:shape" + keys) ------

def diffsynth_hash(shapes: dict) -> str:
    """DiffSynth's hash_model_file over a file's {name: shape}."""
    keys = []
    for k, v in shapes.items():
        keys += [k + ":" + "_".join(map(str, v)), k]
    return hashlib.md5(",".join(sorted(keys)).encode()).hexdigest()


RELEASED_SIGLIP = dict(hidden_size=1536, intermediate_size=6144, num_hidden_layers=40, num_attention_heads=16,
                       image_size=384, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
RELEASED_DINOV3 = dict(hidden_size=4096, intermediate_size=8192, num_hidden_layers=40, num_attention_heads=32,
                       num_register_tokens=4, patch_size=16, use_gated_mlp=True, hidden_act="silu", mlp_bias=True,
                       query_bias=False, key_bias=False, value_bias=False, proj_bias=True, layer_norm_eps=1e-5,
                       rope_theta=100.0)


def meta_shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("role, registry_hash", [(SIGLIP2, "469c78b61e3e31bc9eec0d0af3d3f2f8"),
                                                 (DINOV3, "5722b5c873720009de96422993b15682")])
def test_released_encoder_layouts_are_read(role, registry_hash):
    """DiffSynth's configs give the registry's hash; the app reads that file layout back into the same model."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel, SiglipVisionConfig, SiglipVisionModel

    from engine.weights.assign import build_empty, check_shapes

    with torch.device("meta"):
        released = SiglipVisionModel(SiglipVisionConfig(**RELEASED_SIGLIP)) if role == SIGLIP2 else \
            DINOv3ViTModel(DINOv3ViTConfig(**RELEASED_DINOV3))
    file_shapes = tiny.released_names(role, meta_shapes(released))
    assert diffsynth_hash(file_shapes) == registry_hash
    names = E.file_to_model_names(role, file_shapes)
    shapes = {names[k]: v for k, v in file_shapes.items()}
    config = E.config_for(role, "released", shapes)
    model = build_empty(E.factory(role, config))
    check_shapes(model, shapes, "released", role)  # raises on any difference
    assert config.num_attention_heads == (16 if role == SIGLIP2 else 32)
    assert (config.image_size, config.hidden_size) == ((384, 1536) if role == SIGLIP2 else (224, 4096))


def test_released_hypernetwork_layout_is_read():
    with torch.device("meta"):
        released = H.ZImageImageToLora(H.HyperConfig(5632, 128, 3840, 10240, (("layers_lora", 30),
                                                     ("context_refiner_lora", 2), ("noise_refiner_lora", 2))))
    shapes = meta_shapes(released)
    assert diffsynth_hash(shapes) == "9510cb8cd1dd34ee0e4f111c24905510"
    assert sum(np.prod(s) for s in shapes.values()) == 1_613_234_176  # 3.2 GB in bf16
    assert H.config_from_shapes("released", shapes) == released.cfg
    with torch.device("meta"):
        out = released(torch.zeros(1, 5632, device="meta"))
    assert len(out) == 34 * 7
    assert out["layers.29.feed_forward.w2"][0].shape == (1, 4, 10240)
    assert out["noise_refiner.1.attention.to_out.0"][1].shape == (1, 3840, 4)


# ---- loading the LoRA ------------------------------------------------------------------------------


def test_comfyui_maps_every_key(kit):
    """ComfyUI's Lumina2 key map (comfy/lora.py, from utils.z_image_to_diffusers) registers `transformer.` + the
    diffusers name of each block's to_q/to_k/to_v (as qkv slices), to_out.0 and w1/w2/w3; lora_A/lora_B pairs with
    no alpha apply at scale 1."""
    result = make(kit, kit["pictures"][:1], "comfy")
    comfy = {f"transformer.{p}.{i}.{t}" for p, n in (("layers", 2), ("context_refiner", 1), ("noise_refiner", 1))
             for i in range(n) for t in ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
                                         "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")}
    keys = load_file(str(result.path)).keys()
    stems = {k.rsplit(".lora_", 1)[0] for k in keys}
    assert stems == comfy
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)


@pytest.fixture
def lora_engine(engine, kit, monkeypatch):
    folder = kit["folder"] / "engine_loras"
    monkeypatch.setitem(engine.lora_dirs, "z_image", folder)
    yield engine
    engine.apply_loras(engine.settings_for("z_image_tiny_test", prompt="x"))


def test_loads_in_diffusers_and_here_with_equal_images(kit, lora_engine, tiny_tokenizer):
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    from engine.settings import lora_item
    from models.z_image import tiny as ztiny

    result = make(kit, kit["pictures"], "for_diffusers", folder=lora_engine.lora_dirs["z_image"])
    s = lora_engine.settings_for("z_image_tiny_test", prompt="a red fox", seed=5, width=256, height=256,
                                 num_inference_steps=4)
    plain = np.asarray(lora_engine.generate(s)[0].image, dtype=np.int16)
    ours = np.asarray(lora_engine.generate(s.__class__(**{**s.to_dict(), "loras": [
        lora_item(result.name)]}))[0].image, dtype=np.int16)
    model = lora_engine.model  # its VAE and text encoder; a fresh transformer (PEFT changes the model it loads into)
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=s.flow_shift), vae=model.vae,
                          text_encoder=model.encoder.text_encoder, tokenizer=tiny_tokenizer,
                          transformer=ztiny.make_transformer())
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(result.path), adapter_name="i2l")
    theirs = np.asarray(pipe(prompt=s.prompt, height=256, width=256, num_inference_steps=4, guidance_scale=0.0,
                             generator=torch.Generator("cpu").manual_seed(5)).images[0], dtype=np.int16)
    assert np.abs(ours - plain).max() > 10  # the LoRA changes the image
    assert np.abs(ours - theirs).max() <= 1


def test_diffsynth_style_file_gives_the_same_image(kit, lora_engine):
    """The ComfyUI node saves DiffSynth's output as is: no prefix, `layers.0.attention.to_q.lora_A.weight`."""
    from engine.settings import lora_item

    result = make(kit, kit["pictures"][:2], "ours", folder=lora_engine.lora_dirs["z_image"])
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(str(result.path)).items()}
    save_file(tensors, str(lora_engine.lora_dirs["z_image"] / "node_style.safetensors"))
    s = lora_engine.settings_for("z_image_tiny_test", prompt="a boat", seed=2, width=256, height=256,
                                 num_inference_steps=3)
    images = [np.asarray(lora_engine.generate(s.__class__(**{**s.to_dict(), "loras": [lora_item(n)]}))[0].image)
              for n in (result.name, "node_style.safetensors")]
    assert np.array_equal(*images)


# ---- never overwritten ----------------------------------------------------------------------------------


def test_never_overwritten(kit, monkeypatch):
    first = make(kit, kit["pictures"][:1], "keep me")
    data = first.path.read_bytes()
    with pytest.raises(SettingsError, match="exists already.*never overwritten"):
        make(kit, kit["pictures"][:2], "keep me")
    # a file of that name appearing while the LoRA is being made: the job fails, the file stays as it was
    req = R.prepare(kit["pictures"][:1], "raced", kit["folder"] / "loras", kit["locator"], dtype="float32")
    req.target.write_bytes(b"someone else's")
    with pytest.raises(UserError, match="created meanwhile"):
        R.make_lora(req, kit["locator"], "cpu")
    assert req.target.read_bytes() == b"someone else's"
    assert first.path.read_bytes() == data
    assert not list(req.target.parent.glob(".*partial"))


def test_names_are_checked(kit):
    for bad in ("", "../up", "a/b", ".hidden", "x" * 120):
        with pytest.raises(SettingsError):
            R.prepare(kit["pictures"][:1], bad, kit["folder"] / "loras", kit["locator"])
    req = R.prepare(kit["pictures"][:1], "My style 2.safetensors", kit["folder"] / "loras", kit["locator"])
    assert req.name == "My style 2.safetensors"


# ---- memory modes and Stop ----------------------------------------------------------------------------


def test_int8_mode_is_close_and_stream_mechanics(kit):
    from optimum.quanto import QLinear

    from engine.placement.streaming import BlockStreamer

    exact = load_file(str(make(kit, kit["pictures"][:1], "exact").path))
    int8 = load_file(str(make(kit, kit["pictures"][:1], "int8", memory="int8").path))
    key = "transformer.layers.0.attention.to_q.lora_A.weight"
    assert not torch.equal(exact[key], int8[key])
    for k in exact:
        assert torch.nn.functional.cosine_similarity(exact[k].flatten(), int8[k].flatten(), dim=0) > 0.99
    part = R.read_part(DINOV3, kit["paths"][DINOV3])
    model = R.build(part, torch.float32, int8=True)
    assert any(isinstance(m, QLinear) for m in model.model.layer.modules())
    # streaming: outside a block's run its weights are where they were (bf16 here), inside it in the copy's dtype
    model = R.build(part, torch.bfloat16)
    blocks = E.blocks(DINOV3, model)
    home = blocks[1].mlp.up_proj.weight.data_ptr()
    seen = []
    blocks[1].register_forward_hook(lambda m, a, o: seen.append(m.mlp.up_proj.weight.dtype))
    pixels = torch.randn(1, 3, 224, 224)
    with BlockStreamer(model, blocks, "cpu", torch.float32) as streamer:
        streamed = E.encode(model, pixels)
        assert blocks[1].mlp.up_proj.weight.dtype == torch.bfloat16 and streamer.copies == 2
        assert model.embeddings.patch_embeddings.weight.dtype == torch.float32  # outside blocks: moved for good
    assert seen == [torch.float32]
    assert blocks[1].mlp.up_proj.weight.data_ptr() == home
    assert model.embeddings.patch_embeddings.weight.dtype == torch.bfloat16
    reference = E.encode(R.build(part, torch.bfloat16).float(), pixels)  # the same weights, cast beforehand
    torch.testing.assert_close(streamed, reference, rtol=0, atol=0)


def test_memory_modes(monkeypatch, tmp_path):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [R.resolve_mode(m, cpu, 10**12) for m in R.MEMORY_MODES] == ["whole", "whole", "whole", "int8"]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (11 * 2**30, 12 * 2**30))  # a 12 GB card
    dinov3, siglip2 = 13_432_070_144, 2_327_319_552
    assert R.resolve_mode("auto", cuda, dinov3) == "stream" and R.resolve_mode("auto", cuda, siglip2) == "whole"
    assert [R.resolve_mode(m, cuda, dinov3) for m in ("whole", "stream", "int8")] == ["whole", "stream", "int8"]
    part = R.read_part(SIGLIP2, tiny.write_files(tmp_path)[SIGLIP2])
    assert part.weight_bytes(torch.float32) == 2 * part.weight_bytes(torch.bfloat16) == 4 * part.weight_bytes(
        torch.bfloat16, int8=True)


def test_stop_leaves_no_file(kit, engine, monkeypatch):
    monkeypatch.setitem(engine.lora_dirs, "z_image", kit["folder"] / "stopped")
    monkeypatch.setattr(engine, "locator", kit["locator"])
    req = engine.prepare_image_to_lora(kit["pictures"][:1], "stopped", dtype="float32")
    events = []

    def work(ctx):
        def report(done, total, what):
            events.append(what)
            if "DINOv3" in what:
                engine.jobs.stop("tester")
            ctx.progress(done, total, what)
        return engine.image_to_lora(req, report)

    with pytest.raises(Interrupted):
        for _ in engine.jobs.run(work, "tester", "image-to-lora"):
            pass
    assert any("SigLIP2" in e for e in events)
    assert not req.target.exists()
    assert engine.model is None  # the generation model was unloaded for the encoders


def test_out_of_memory_is_one_clear_line(kit, monkeypatch):
    def boom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 13.40 GiB")

    monkeypatch.setattr(E, "encode", boom)
    req = R.prepare(kit["pictures"][:1], "oom", kit["folder"] / "loras", kit["locator"], dtype="float32")
    with pytest.raises(UserError, match="out of GPU memory running the SigLIP2-G384 image encoder .*'stream'"):
        R.make_lora(req, kit["locator"], "cpu")
    assert not req.target.exists()
