"""Fun-ControlNet-Union on tiny random models: every version and file layout loads and is recognised; control
composes into the pipeline (weight, step range, inpaint) and matches diffusers' ZImageControlNetPipeline."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.errors import ModelFileError, SettingsError, UserError
from models.z_image import control_keys as CK
from models.z_image import tiny
from models.z_image.control_loader import load_control
from engine.weights.assign import state_dict_for_file
from tests import layouts

VERSIONS = {"1.0": "z_image_control", "2.0": "z_image_control2", "2.1": "z_image_control2_1"}
N_CONTROL = 3


def model_type(version):
    return f"tiny_ctl_{version.replace('.', '')}"


@pytest.fixture(scope="module")
def ctl(tmp_path_factory):
    """Tiny Turbo parts (6 layers, 2 refiner layers), a control module of each version, model JSONs, an engine."""
    from engine.engine import Engine
    from engine.weights.files import FileLocator
    from engine.registry import Registry
    from models import families

    folder = tmp_path_factory.mktemp("ctl")
    parts = {"transformer": tiny.make_transformer(n_layers=6, refiner_layers=2),
             "text_encoder": tiny.make_text_encoder(), "vae": tiny.make_vae()}
    files = tiny.write_parts(folder, parts)
    tok = tiny.make_tokenizer()
    controls, defs = {}, []
    for version, arch in VERSIONS.items():
        controls[version] = tiny.make_control(parts["transformer"], version, N_CONTROL)
        file = folder / f"control_{version}.safetensors"
        save_file(state_dict_for_file(controls[version]), str(file))
        model_json = {"model": {"architecture": arch, "modules": str(file), **files},
                      "resolution": "256x256", "num_inference_steps": 2, "control_weight": 0.8}
        defs.append(folder / f"{model_type(version)}.json")
        defs[-1].write_text(json.dumps(model_json))
    rng = np.random.default_rng(0)
    picture = (rng.random((256, 256, 3)) * 120).astype("uint8")
    picture[64:192, 80:176] = 230  # a bright box: edges for canny, structure for control
    Image.fromarray(picture).save(folder / "picture.png")
    mask = np.zeros((256, 256), np.uint8)
    mask[:, 128:] = 255  # repaint the right half
    Image.fromarray(mask).save(folder / "mask.png")
    engine = Engine(Registry(families(), extra_files=defs), FileLocator(checkpoints=folder / "ckpts", offline=True))
    return dict(folder=folder, parts=parts, tok=tok, controls=controls, engine=engine,
                picture=str(folder / "picture.png"), mask=str(folder / "mask.png"))


def settings(ctl, version="1.0", **kw):
    base = dict(prompt="a red box on a table", seed=7, control_image=ctl["picture"], control_mode="raw")
    return ctl["engine"].settings_for(model_type(version), **{**base, **kw})


def image_of(ctl, s):
    return np.asarray(ctl["engine"].generate(s)[0].image, dtype=np.int16)


# ---- loading -------------------------------------------------------------------------------------

def assert_same_weights(net, reference):
    got = {k: v for k, v in net.state_dict().items() if k.startswith(CK.CONTROL_STEMS)}
    want = {k: v for k, v in reference.state_dict().items() if k in got}
    assert set(got) == set(want) and got
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("version,refiner", [("1.0", CK.REFINER_PLAIN), ("2.0", CK.REFINER_REPEAT),
                                             ("2.1", CK.REFINER_OWN)])
@pytest.mark.parametrize("layout", ["original", "comfyui", "wan2gp", "diffusers"])
def test_every_version_and_layout_loads(ctl, tmp_path, version, refiner, layout):
    transformer, module = ctl["parts"]["transformer"], ctl["controls"][version]
    sd = state_dict_for_file(module)
    if layout == "original":
        path = tmp_path / "Z-Image-Turbo-Fun-Controlnet-Union.safetensors"
        save_file(sd, str(path))
    elif layout == "comfyui":
        path = tmp_path / "patch.safetensors"
        save_file(layouts.to_comfyui_control_keys(sd, "model.diffusion_model."), str(path))
    elif layout == "wan2gp":
        path = layouts.write_wan2gp(tmp_path / "Z-Image-Turbo-Fun-Controlnet-Union_bf16.safetensors", module)
    else:
        saved = module
        if version == "2.0":  # diffusers saves 2.0 in its "control_layers" form, without the untrained refiner
            from diffusers import ZImageControlNetModel

            cfg = {k: v for k, v in module.config.items() if not k.startswith("_")}
            saved = ZImageControlNetModel(**{**cfg, "add_control_noise_refiner": "control_layers"})
            saved.load_state_dict({k: v for k, v in sd.items() if not k.startswith("control_noise_refiner.")})
        path = layouts.write_control_diffusers_folder(tmp_path / "controlnet", saved)
    net, spec = load_control(path, transformer, torch.float32)
    assert (spec.version, spec.refiner, spec.n_layers) == (version, refiner, N_CONTROL)
    assert spec.in_channels == (16 if version == "1.0" else 33) and spec.inpaint == (version != "1.0")
    assert spec.places == (0, 2, 4)
    assert_same_weights(net, module)
    # the embedders, refiners and pad tokens are the transformer's own: nothing held twice
    assert net.noise_refiner is transformer.noise_refiner and net.all_x_embedder is transformer.all_x_embedder
    assert net.x_pad_token is transformer.x_pad_token
    if version == "2.0":
        assert net.control_noise_refiner is None  # its untrained blocks are not loaded


@pytest.mark.parametrize("n_control,in_ch,refiner,version,places,name", [
    (6, 16, "plain", "1.0", (0, 5, 10, 15, 20, 25), "1.0 (6 control layers"),
    (15, 33, "own", "2.1", tuple(range(0, 30, 2)), "2.1 (15 control layers"),
    (3, 33, "own", "2.1", (0, 10, 20), "2.1 lite (3 control layers"),
    (15, 33, "none", "2.0", tuple(range(0, 30, 2)), "2.0 (15 control layers"),
])
def test_real_file_shapes_are_recognised(n_control, in_ch, refiner, version, places, name):
    """The real files' layouts, from shapes alone (a 30-layer, 3840-wide host)."""
    dim, shapes = 3840, {"control_all_x_embedder.2-1.weight": (3840, in_ch * 4)}
    for i in range(n_control):
        shapes[f"control_layers.{i}.attention.norm_q.weight"] = (128,)
        shapes[f"control_layers.{i}.after_proj.weight"] = (dim, dim)
    for i in range(2 if refiner != "none" else 0):
        shapes[f"control_noise_refiner.{i}.attention.to_q.weight"] = (dim, dim)
        if refiner == "own":
            shapes[f"control_noise_refiner.{i}.after_proj.weight"] = (dim, dim)
    spec = CK.infer_spec("f", shapes, 30)
    assert spec.version == version and spec.places == places and spec.heads == 30 and name in spec.name
    assert spec.blocks_per_pass == {"1.0": 8, "2.1": 2 + n_control, "2.0": 30}[version]


def test_wrong_files_are_named(ctl, tmp_path):
    transformer = ctl["parts"]["transformer"]
    save_file(state_dict_for_file(transformer), str(tmp_path / "turbo.safetensors"))
    with pytest.raises(ModelFileError, match="holds a Z-Image transformer, not a Fun-ControlNet control module"):
        load_control(tmp_path / "turbo.safetensors", transformer, torch.float32)
    wide = tiny.make_control(tiny.make_transformer(dim=128, n_layers=6, refiner_layers=2, heads=2), "2.1", 3)
    save_file(state_dict_for_file(wide), str(tmp_path / "wide.safetensors"))
    with pytest.raises(ModelFileError, match="width 128"):
        load_control(tmp_path / "wide.safetensors", transformer, torch.float32)
    sd = state_dict_for_file(ctl["controls"]["1.0"])
    sd.pop("control_layers.1.after_proj.weight")
    save_file(sd, str(tmp_path / "cut.safetensors"))
    with pytest.raises(ModelFileError, match="missing.*control_layers.1.after_proj.weight"):
        load_control(tmp_path / "cut.safetensors", transformer, torch.float32)


# ---- generation ----------------------------------------------------------------------------------

def test_weight_zero_is_exactly_no_control(ctl):
    plain = image_of(ctl, settings(ctl, control_image="", control_weight=0.0))
    assert np.array_equal(image_of(ctl, settings(ctl, control_weight=0.0)), plain)
    controlled = image_of(ctl, settings(ctl))
    assert np.abs(controlled - plain).max() > 10  # a control image changes the picture
    other = np.asarray(Image.open(ctl["picture"]))[::-1].copy()
    flipped = ctl["folder"] / "flipped.png"
    Image.fromarray(other).save(flipped)
    assert np.abs(image_of(ctl, settings(ctl, control_image=str(flipped))) - controlled).max() > 10


@pytest.mark.parametrize("version", ["1.0", "2.0", "2.1"])
def test_nag_guides_the_control_blocks_too(ctl, version):
    """With control, the negative caption's tokens take the control hint the reference pass with the negative
    in the caption slot would give them: the same caption in both slots changes nothing (up to rounding),
    and another negative changes the picture."""
    nag = dict(nag_scale=8.0, nag_alpha=1.0, nag_tau=50.0, nag_start=0.0, nag_end=1.0)
    plain = image_of(ctl, settings(ctl, version, negative_prompt="", **nag))
    same = image_of(ctl, settings(ctl, version, negative_prompt="a red box on a table", **nag))
    assert np.abs(same - plain).max() <= 2
    other = image_of(ctl, settings(ctl, version, negative_prompt="a blue ball in the grass", **nag))
    assert np.abs(other - plain).max() > 10


def diffusers_image(ctl, version, s, reference_refiner_hints):
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImageControlNetPipeline

    model = ctl["engine"].load(model_type(version))
    module = ctl["controls"][version]
    net = tiny.diffusers_controlnet(module, version)
    pipe = ZImageControlNetPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=s.flow_shift), vae=model.vae,
                                    text_encoder=model.encoder.text_encoder, tokenizer=ctl["tok"],
                                    transformer=model.transformer, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    handles = add_reference_refiner_hints(pipe, s.control_weight) if reference_refiner_hints else []
    try:
        out = pipe(prompt=s.prompt, control_image=Image.open(s.control_image).convert("RGB"),
                   controlnet_conditioning_scale=s.control_weight, height=s.height, width=s.width,
                   num_inference_steps=s.num_inference_steps, guidance_scale=0.0,
                   generator=torch.Generator("cpu").manual_seed(s.seed))
    finally:
        for h in handles:
            h.remove()
    return np.asarray(out.images[0], dtype=np.int16)


def add_reference_refiner_hints(pipe, scale):
    """diffusers adds 2.x's noise-refiner hints only to its controlnet's own copy of the refiner pass; the
    reference (VideoX-Fun) adds them to the transformer's. Capture them and add them in the transformer's pass."""
    net, tr = pipe.controlnet, pipe.transformer
    stage = net.control_layers if net.add_control_noise_refiner == "control_layers" else net.control_noise_refiner
    places = net.control_refiner_layers_places
    state = {"phase": None, "hints": {}}

    def start(*_):
        state.update(phase="refiner stage", hints={})

    def refiner_runs(*_):
        if state["phase"] == "refiner stage":
            state["phase"] = "controlnet"

    def capture(i):
        def hook(_m, _a, out):
            if state["phase"] == "refiner stage":
                state["hints"][places[i]] = out
        return hook

    def add(i):
        def hook(_m, _a, out):
            return out + state["hints"][i] * scale if state["phase"] == "transformer" else out
        return hook

    return [net.register_forward_pre_hook(start), tr.noise_refiner[0].register_forward_pre_hook(refiner_runs),
            tr.register_forward_pre_hook(lambda *_: state.update(phase="transformer"))] + \
        [stage[i].after_proj.register_forward_hook(capture(i)) for i in range(len(places))] + \
        [tr.noise_refiner[i].register_forward_hook(add(i)) for i in places]


def test_v1_matches_diffusers(ctl):
    s = settings(ctl, "1.0")
    ours, theirs = image_of(ctl, s), diffusers_image(ctl, "1.0", s, reference_refiner_hints=False)
    assert np.abs(ours - theirs).max() <= 1


@pytest.mark.parametrize("version", ["2.0", "2.1"])
def test_v2_matches_diffusers_with_the_reference_refiner_hints(ctl, version):
    s = settings(ctl, version)
    ours = image_of(ctl, s)
    assert np.abs(ours - diffusers_image(ctl, version, s, reference_refiner_hints=True)).max() <= 1
    # plain diffusers drops the refiner hints from the transformer's pass; we follow the reference
    assert np.abs(ours - diffusers_image(ctl, version, s, reference_refiner_hints=False)).max() > 1


@pytest.mark.parametrize("version,blocks", [("1.0", 2 + N_CONTROL), ("2.0", N_CONTROL + N_CONTROL),
                                            ("2.1", 2 + N_CONTROL)])
def test_control_blocks_run_once_per_pass(ctl, version, blocks):
    model = ctl["engine"].load(model_type(version))
    runs, passes = model.control.blocks_run, model.passes
    ctl["engine"].generate(settings(ctl, version, num_inference_steps=3))
    assert model.passes - passes == 3  # control adds no transformer pass
    assert model.control.blocks_run - runs == 3 * blocks == 3 * model.control.spec.blocks_per_pass


@pytest.mark.parametrize("start,end,active", [(0.0, 0.5, 2), (0.5, 1.0, 2), (0.25, 1.0, 3), (0.0, 0.75, 3)])
def test_control_step_range(ctl, start, end, active):
    model = ctl["engine"].load(model_type("2.1"))
    runs = model.control.blocks_run
    ctl["engine"].generate(settings(ctl, "2.1", num_inference_steps=4, control_start=start, control_end=end))
    assert model.control.blocks_run - runs == active * (2 + N_CONTROL)


def test_inpaint_keeps_unmasked_latents(ctl):
    from models.z_image import control

    s = settings(ctl, "2.1", mask=ctl["mask"], control_mode="canny")
    steps = []
    ctl["engine"].generate(s, callback=lambda run, i, n, lat: steps.append(lat.clone()))
    model = ctl["engine"].model
    inputs = control.encode_inputs(model, control.pictures(s, model.control.locator, model.device), model.control.spec)
    assert inputs.context.shape == (33, 1, 32, 32)
    keep = inputs.keep[0, 0].bool()
    assert keep[:, :16].all() and not keep[:, 16:].any()  # left half kept, at latent resolution
    assert torch.equal(inputs.context[16, 0], inputs.keep[0, 0])  # channel 16 is the keep mask
    final, known = steps[-1][0], inputs.known[0]
    torch.testing.assert_close(final[:, keep], known[:, keep], rtol=0, atol=1e-4)
    assert (final[:, ~keep] - known[:, ~keep]).abs().max() > 0.1  # the masked half is regenerated
    plain = image_of(ctl, settings(ctl, "2.1", control_mode="canny"))
    assert np.abs(image_of(ctl, s) - plain).max() > 10


def test_fit_modes_and_output_size(ctl, tmp_path):
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((100, 200, 3), 200, np.uint8)).save(wide)
    engine = ctl["engine"]
    r = engine.generate(settings(ctl, control_image=str(wide), control_fit="image", width=256, height=256,
                                 num_inference_steps=1))[0]
    assert r.image.size == (512, 256) and (r.settings.width, r.settings.height) == (512, 256)  # 2:1, min side 256
    boxed = np.asarray(engine.control_map(settings(ctl, control_image=str(wide), control_fit="fit")))
    assert boxed.shape == (256, 256, 3) and boxed[0].max() == 0 and boxed[128, 128].min() == 200  # letterboxed
    cropped = np.asarray(engine.control_map(settings(ctl, control_image=str(wide), control_fit="crop")))
    assert cropped.shape == (256, 256, 3) and cropped.min() == 200


def test_control_settings_are_checked_before_loading(ctl, tmp_path):
    engine = ctl["engine"]
    with pytest.raises(SettingsError, match="cannot inpaint"):
        engine.check(settings(ctl, "1.0", mask=ctl["mask"]))
    with pytest.raises(SettingsError, match="'gray' is not available"):
        engine.check(settings(ctl, "1.0", control_mode="gray"))
    with pytest.raises(SettingsError, match="takes no control image"):
        engine.check(dataclasses.replace(settings(ctl), model_type="z_image"))
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(UserError, match="not an image"):
        engine.generate(settings(ctl, control_image=str(tmp_path / "notes.txt")))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UserError, match="mask .*empty.png: the file is empty"):
        engine.generate(settings(ctl, "2.1", mask=str(tmp_path / "empty.png")))
    assert engine.generate(settings(ctl, num_inference_steps=1))  # still serving after the error
    assert any("no control image" in n for n in engine.check(settings(ctl, control_image="")))


def test_command_line(tmp_path):
    from engine.outputs import read_png_settings
    from models.z_image.tiny import write_control_test_model
    from tests.test_cli import run

    model = ["--model-def", str(write_control_test_model(tmp_path / "tiny")), "--model", "z_image_control_tiny_test"]
    photo = tmp_path / "photo.png"
    Image.fromarray(np.tile(np.arange(256, dtype=np.uint8)[:, None, None], (1, 320, 3))).save(photo)
    r = run("control-map", *model, "--control-image", str(photo), "--control-mode", "canny", "--canny-low", "1",
            "--canny-high", "2", "--output", str(tmp_path / "maps"))
    assert r.returncode == 0, r.stderr
    cmap = Image.open(r.stdout.split("\t")[0])
    assert cmap.size == (256, 256) and np.asarray(cmap).max() == 255
    r = run("generate", *model, "--prompt", "a ramp", "--control-image", str(photo), "--control-mode", "gray",
            "--control-weight", "0.6", "--control-end", "0.5", "--mask", str(photo), "--steps", "2",
            "--output", str(tmp_path / "out.png"))
    assert r.returncode == 0, r.stderr
    shown, _ = read_png_settings(tmp_path / "out.png")
    # the pictures are kept by content beside the output, and recorded with their names
    assert shown.control_image == shown.mask and Path(shown.mask).parent == (tmp_path / "inputs").resolve()
    assert Path(shown.mask).read_bytes() == photo.read_bytes()
    assert shown.inputs["control_image"]["name"] == shown.inputs["mask"]["name"] == "photo.png"
    assert (shown.control_mode, shown.control_weight, shown.control_end) == ("gray", 0.6, 0.5)


@pytest.mark.parametrize("kw,message", [
    (dict(control_weight=5.0), "control weight 5.0 is out of range"),
    (dict(control_start=0.6, control_end=0.4), "control start 0.6 must be below control end 0.4"),
    (dict(control_mode="hed"), "control mode 'hed' is not one of"),
    (dict(control_fit="stretch"), "control fit 'stretch'"),
    (dict(canny_low=300, canny_high=200), "canny low threshold 300 is above"),
    (dict(depth_model="huge"), "depth model 'huge'"),
    (dict(control_image="", mask="m.png"), "a mask needs a picture to repaint"),
    (dict(control_mode="none"), "'none' .* is for inpainting"),
])
def test_bad_control_settings(kw, message):
    from engine.settings import GenerationSettings

    with pytest.raises(SettingsError, match=message):
        GenerationSettings(**{"model_type": "z_image_control2_1", "prompt": "x", "control_image": "p.png", **kw}
                           ).validate()
