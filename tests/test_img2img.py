"""img2img on tiny models: the same images as diffusers' ZImageImg2ImgPipeline, the schedule's tail only (pass
counts for strength S on every sampler, TwinFlow included), strength 0 and 1."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from engine.sampling.samplers import SAMPLERS, passes_per_image
from engine.sampling.strength import steps_to_run, truncate
from tests.test_pipeline import assert_same_images


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """A 256x256 RGB picture with structure (a gradient and a box)."""
    folder = tmp_path_factory.mktemp("img2img")
    y, x = np.mgrid[0:256, 0:256]
    a = np.stack([x, y, (x + y) // 2], -1).astype(np.uint8)
    a[64:160, 96:200] = (220, 40, 40)
    path = folder / "init.png"
    Image.fromarray(a).save(path)
    return path


def diffusers_img2img(models, tokenizer, s, image_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImageImg2ImgPipeline

    pipe = ZImageImg2ImgPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=s.flow_shift), vae=models["vae"],
                                 text_encoder=models["text_encoder"], tokenizer=tokenizer,
                                 transformer=models["transformer"])
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=s.prompt, image=Image.open(image_path).convert("RGB"), strength=s.strength,
               negative_prompt=s.negative_prompt or None, num_inference_steps=s.num_inference_steps,
               guidance_scale=s.guidance_scale, cfg_truncation=s.cfg_truncation,
               num_images_per_prompt=s.batch_size, generator=torch.Generator("cpu").manual_seed(s.seed))
    return [np.asarray(im, dtype=np.int16) for im in out.images]


def ours(engine, s):
    return [np.asarray(r.image, dtype=np.int16) for r in engine.generate(s)]


def test_steps_for_strength_follow_diffusers():
    assert [steps_to_run(8, s) for s in (0.0, 0.01, 0.3, 0.35, 0.5, 0.6, 0.75, 1.0)] == [0, 1, 3, 3, 4, 5, 6, 8]
    sigmas = torch.linspace(1, 0, 9)
    assert torch.equal(truncate(sigmas, 0.5), sigmas[4:])
    assert torch.equal(truncate(sigmas, 1.0), sigmas)


def test_turbo_img2img_matches_diffusers(engine, tiny_models, tiny_tokenizer, picture):
    s = engine.settings_for("z_image_tiny_test", prompt="a red box", seed=11, init_image=str(picture),
                            strength=0.6, num_inference_steps=5)
    assert_same_images(ours(engine, s), diffusers_img2img(tiny_models, tiny_tokenizer, s, picture))


def test_base_cfg_batch_img2img_matches_diffusers(engine, tiny_models, tiny_tokenizer, picture, monkeypatch):
    monkeypatch.setitem(engine.registry.types["z_image_tiny_test"].model, "architecture", "z_image_base")
    s = engine.settings_for("z_image_tiny_test", prompt="a lighthouse", negative_prompt="blurry", seed=3,
                            guidance_scale=3.0, batch_size=2, num_inference_steps=6, strength=0.35,
                            init_image=str(picture))
    assert_same_images(ours(engine, s), diffusers_img2img(tiny_models, tiny_tokenizer, s, picture))


@pytest.mark.parametrize("sampler", [n for n, info in SAMPLERS.items() if not info.time_target])
def test_only_the_schedule_tail_runs(engine, picture, sampler):
    s = engine.settings_for("z_image_tiny_test", prompt="a cat", seed=1, num_inference_steps=8, sampler=sampler,
                            init_image=str(picture), strength=0.5)
    before = engine.load("z_image_tiny_test").passes
    steps = []
    first = engine.generate(s, callback=lambda run, i, n, lat: steps.append((i, n)))[0].image
    assert engine.model.passes - before == passes_per_image(sampler, 4)  # 4 of 8 steps
    assert steps == [(i, 4) for i in range(4)]
    plain = engine.generate(dataclasses.replace(s, init_image=""))[0].image
    assert np.abs(np.asarray(first, dtype=int) - np.asarray(plain, dtype=int)).max() > 10  # the init counts


def test_twinflow_img2img_runs_its_tail(picture, tmp_path):
    from engine.engine import Engine
    from engine.registry import Registry
    from engine.weights.files import FileLocator
    from models import families
    from models.z_image.tiny import write_test_model

    path = write_test_model(tmp_path, name="twinflow_i2i_test", twinflow=True)
    import json

    data = json.loads(path.read_text())
    data["model"]["architecture"] = "z_image_twinflow_turbo"
    data.update(num_inference_steps=4, sampler="twinflow")
    path.write_text(json.dumps(data))
    engine = Engine(Registry(families(), extra_files=[path]), FileLocator(offline=True))
    s = engine.settings_for("twinflow_i2i_test", prompt="a fox", seed=2, init_image=str(picture), strength=0.5)
    out = np.asarray(engine.generate(s)[0].image, dtype=int)
    assert engine.model.passes == 2  # times 0.999, 0.833, 0.667, 0.5: the last 2 steps run
    assert np.array_equal(np.asarray(engine.generate(s)[0].image, dtype=int), out)
    text = np.asarray(engine.generate(dataclasses.replace(s, strength=1.0))[0].image, dtype=int)
    assert engine.model.passes == 2 + 2 + 4
    assert np.abs(out - text).max() > 10


def test_strength_one_is_text_to_image_and_zero_returns_the_input(engine, picture):
    s = engine.settings_for("z_image_tiny_test", prompt="a cat", seed=4, num_inference_steps=3,
                            init_image=str(picture), strength=1.0)
    text = engine.generate(dataclasses.replace(s, init_image=""))[0].image
    assert np.array_equal(np.asarray(engine.generate(s)[0].image), np.asarray(text))
    passes = engine.load("z_image_tiny_test").passes
    unchanged = engine.generate(dataclasses.replace(s, strength=0.0))
    assert engine.model.passes == passes and len(unchanged) == 1
    assert np.array_equal(np.asarray(unchanged[0].image), np.asarray(Image.open(picture).convert("RGB")))


def test_odd_sizes_and_modes_come_back_at_their_size(engine, tmp_path):
    """A 16-bit grey picture of 200x150 (not multiples of 16), an RGBA one and a CMYK JPEG with an EXIF
    rotation: converted as control images are, generated and returned at their own (rotated) size."""
    grey = tmp_path / "grey16.png"
    Image.fromarray((np.mgrid[0:150, 0:200][1] * 300).astype(np.uint16)).save(grey)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (300, 260), (10, 200, 30, 128)).save(rgba)
    cmyk = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the picture shows as 240x320
    Image.new("CMYK", (320, 240), (0, 128, 128, 0)).save(cmyk, exif=exif.tobytes())
    for path, size in ((grey, (200, 150)), (rgba, (300, 260)), (cmyk, (240, 320))):
        s = engine.settings_for("z_image_tiny_test", prompt="x", seed=0, num_inference_steps=2,
                                init_image=str(path), strength=0.5)
        assert engine.generate(s)[0].image.size == size


def test_strength_zero_loads_no_model(tiny_model_json, picture):
    from engine.engine import Engine
    from engine.registry import Registry
    from engine.weights.files import FileLocator
    from models import families

    fresh = Engine(Registry(families(), extra_files=[tiny_model_json[0]]), FileLocator(offline=True))
    s = fresh.settings_for("z_image_tiny_test", prompt="x", init_image=str(picture), strength=0.0, upscale=1.5)
    assert fresh.apply_loras(s) == []
    result = fresh.generate(s)[0]
    assert fresh.model is None and result.image.size == (384, 384)
