"""Inpaint and outpaint without a control module: kept pixels exactly as they were, the masked part the same as
diffusers' ZImageInpaintPipeline, mask blur/grow, "masked area only", outpaint margins, bad masks."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import SettingsError
from engine.images import canvas as C
from tests.test_img2img import picture  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def mask(tmp_path_factory):
    """White (repaint) on a 96x80 box of the 256x256 picture."""
    m = np.zeros((256, 256), np.uint8)
    m[96:176, 48:144] = 255
    path = tmp_path_factory.mktemp("mask") / "mask.png"
    Image.fromarray(m).save(path)
    return path


def arr(image):
    return np.asarray(image, dtype=np.int16)


def settings(engine, picture, mask, **kw):
    base = dict(prompt="a blue ball", seed=5, num_inference_steps=4, init_image=str(picture), mask=str(mask),
                strength=1.0, mask_blur=0)
    return engine.settings_for("z_image_tiny_test", **{**base, **kw})


def diffusers_inpaint(models, tokenizer, s):
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImageInpaintPipeline

    pipe = ZImageInpaintPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=s.flow_shift), vae=models["vae"],
                                 text_encoder=models["text_encoder"], tokenizer=tokenizer,
                                 transformer=models["transformer"])
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=s.prompt, image=Image.open(s.init_image).convert("RGB"), mask_image=Image.open(s.mask),
               strength=s.strength, num_inference_steps=s.num_inference_steps, guidance_scale=0.0,
               generator=torch.Generator("cpu").manual_seed(s.seed))
    return arr(out.images[0])


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_masked_part_matches_diffusers_and_the_rest_is_kept(engine, tiny_models, tiny_tokenizer, picture, mask,
                                                            strength):
    s = settings(engine, picture, mask, strength=strength)
    ours = arr(engine.generate(s)[0].image)
    theirs = diffusers_inpaint(tiny_models, tiny_tokenizer, s)
    repaint = np.asarray(Image.open(mask)) > 0
    assert np.abs(ours[repaint] - theirs[repaint]).max() <= 1
    assert np.array_equal(ours[~repaint], arr(Image.open(picture))[~repaint])  # pixel-exact
    assert np.abs(ours[repaint] - arr(Image.open(picture))[repaint]).max() > 10  # repainted


def test_blur_and_grow_keep_every_pixel_outside_the_shaped_mask(engine, picture, mask):
    s = settings(engine, picture, mask, mask_blur=12, mask_grow=6, sampler="euler_ancestral")
    out = arr(engine.generate(s)[0].image)
    shaped = np.asarray(C.shape_mask(Image.open(mask), 6, 12))
    kept = shaped == 0
    original = arr(Image.open(picture))
    assert np.array_equal(out[kept], original[kept])
    assert (shaped > 0).sum() > (np.asarray(Image.open(mask)) > 0).sum()  # grown and feathered
    soft = (shaped > 0) & (shaped < 255)
    assert soft.any()  # the feathered edge blends generated and kept pixels


def test_outpaint_extends_and_keeps_the_picture(engine, picture):
    s = engine.settings_for("z_image_tiny_test", prompt="more of it", seed=1, num_inference_steps=2,
                            init_image=str(picture), outpaint=[32, 0, 16, 48], mask_blur=0, strength=1.0)
    result = engine.generate(s)[0]
    out = arr(result.image)
    assert result.image.size == (256 + 32, 256 + 16 + 48)
    assert np.array_equal(out[16:16 + 256, 32:32 + 256], arr(Image.open(picture)))
    assert result.passes[0]["size"] == [288, 320]  # generated at the canvas size, multiples of 16


def test_masked_area_only_generates_the_crop_at_full_size(engine, picture, mask):
    s = settings(engine, picture, mask, inpaint_area="masked", inpaint_padding=8, width=256, height=256)
    result = engine.generate(s)[0]
    out, original = arr(result.image), arr(Image.open(picture))
    assert result.image.size == (256, 256)
    assert result.passes[0]["size"] == [256, 256]  # the 112x96 crop was generated at width x height
    region = C.masked_region(Image.open(mask), 8, 256, 256)
    left, top, right, bottom = region.box
    assert (right - left) == (bottom - top)  # widened to the 1:1 aspect of the pass
    assert left <= 40 and right >= 152 and top <= 88 and bottom >= 184
    outside = np.ones((256, 256), bool)
    outside[top:bottom, left:right] = False
    assert np.array_equal(out[outside], original[outside])
    repaint = np.asarray(Image.open(mask)) > 0
    assert np.array_equal(out[~repaint], original[~repaint])
    assert np.abs(out[repaint] - original[repaint]).max() > 10


def test_mask_of_another_size_is_resized_with_a_note(engine, picture, tmp_path):
    small = tmp_path / "small.png"
    m = np.zeros((64, 64), np.uint8)
    m[:, 32:] = 255
    Image.fromarray(m).save(small)
    result = engine.generate(settings(engine, picture, small, num_inference_steps=1))[0]
    assert any("was resized" in n for n in result.notes)
    out = arr(result.image)
    assert np.array_equal(out[:, :120], arr(Image.open(picture))[:, :120])  # the left half is kept


def test_bad_masks_are_refused(engine, picture, tmp_path):
    black = tmp_path / "black.png"
    Image.new("L", (256, 256)).save(black)
    with pytest.raises(SettingsError, match="all black"):
        engine.generate(settings(engine, picture, black))
    with pytest.raises(SettingsError, match="needs a mask"):
        engine.check(settings(engine, picture, "", inpaint_area="masked"))
    with pytest.raises(SettingsError, match="outpaint extends an init image"):
        engine.check(dataclasses.replace(settings(engine, picture, ""), init_image="", outpaint=[8, 0, 0, 0]))
    with pytest.raises(SettingsError, match="upscale and inpaint"):
        engine.check(settings(engine, picture, tmp_path / "x.png", upscale=2.0))
    assert engine.generate(settings(engine, picture, "", num_inference_steps=1, strength=0.5))  # still serving


def test_outpaint_text_forms():
    from engine.settings import parse_outpaint

    assert parse_outpaint("0, 64,16,0") == [0, 64, 16, 0]
    with pytest.raises(SettingsError, match="LEFT,RIGHT,TOP,BOTTOM"):
        parse_outpaint("a,b")
    with pytest.raises(SettingsError, match="4 numbers"):
        parse_outpaint([1, 2])
