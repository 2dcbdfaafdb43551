"""Image to LoRA, bad input: each refused before loading anything heavy, with one line saying what and why."""

import pytest
import torch
from safetensors.torch import save_file

from engine.errors import DownloadError, ModelFileError, UserError
from engine.weights.files import FileLocator
from models.z_image.i2l import files as F
from models.z_image.i2l import run as R
from models.z_image.i2l import tiny
from models.z_image.i2l.identify import DINOV3, HYPERNETWORK, SIGLIP2
from tests.i2l_files import write_picture


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("i2l_input")
    paths = tiny.write_files(folder / "ckpts", "diffsynth")
    return folder, paths, FileLocator(folder / "ckpts", offline=True), write_picture(folder / "ok.png")


def prepare(setup, images=None, name="x", given=None, locator=None):
    folder, _, loc, ok = setup
    return R.prepare([ok] if images is None else images, name, folder / "loras", locator or loc, given=given)


def test_pictures(setup, tmp_path):
    with pytest.raises(UserError, match="no picture given"):
        prepare(setup, images=[])
    with pytest.raises(UserError, match="17 pictures given; at most 16"):
        prepare(setup, images=[setup[3]] * 17)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(UserError, match="broken.png"):
        prepare(setup, images=[tmp_path / "broken.png"])
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(UserError, match="not an image"):
        prepare(setup, images=[tmp_path / "notes.png"])
    with pytest.raises(UserError, match="file not found"):
        prepare(setup, images=[tmp_path / "missing.jpg"])
    small = write_picture(tmp_path / "small.png", (100, 400))
    with pytest.raises(UserError, match=r"100x400 pixels is too small \(at least 128 px"):
        prepare(setup, images=[small])
    assert len(prepare(setup, images=[setup[3]] * 16).pictures) == 16


def test_transparent_and_grey_pictures_work(setup, tmp_path):
    from models.z_image.i2l.pictures import crops

    pics = [write_picture(tmp_path / "a.png", mode="RGBA"), write_picture(tmp_path / "g.png", mode="L")]
    c = crops(list(prepare(setup, images=pics).pictures))
    assert c.shape == (2, 3, 1024, 1024) and c.dtype == torch.uint8


def test_qwen_image_i2l_is_refused_by_name(setup, tmp_path):
    qwen = {f"blocks.{j}.layers.0.proj_{p}.proj_{io}.weight": torch.zeros(2, 2)
            for j in range(2) for p in "ab" for io in ("in", "out")}
    save_file(qwen, str(tmp_path / "Qwen-Image-i2L-Style.safetensors"))
    with pytest.raises(ModelFileError, match="Qwen-Image-i2L's hypernetwork .*not Z-Image"):
        prepare(setup, given={HYPERNETWORK: tmp_path / "Qwen-Image-i2L-Style.safetensors"})


def test_v2_is_refused_by_name(setup, tmp_path):
    v2 = tmp_path / "ZImage-i2L-v2"
    v2.mkdir()
    (v2 / "model.py").write_text("raise SystemExit('never run')\n")
    save_file({"w": torch.zeros(1)}, str(v2 / "model.safetensors"))
    for given in (v2, v2 / "model.safetensors"):
        with pytest.raises(UserError, match="i2L v2 .*executes the Python code"):
            prepare(setup, given={HYPERNETWORK: given})


def test_wrong_file_in_a_slot_is_named(setup):
    _, paths, _, _ = setup
    with pytest.raises(ModelFileError, match="this is the DINOv3-7B image encoder, not the SigLIP2-G384"):
        prepare(setup, given={SIGLIP2: paths[DINOV3]})
    with pytest.raises(ModelFileError, match="this is the SigLIP2-G384 image encoder, not the Z-Image-i2L"):
        prepare(setup, given={HYPERNETWORK: paths[SIGLIP2]})


def test_a_z_image_lora_or_model_is_named(setup, tmp_path):
    save_file({"transformer.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 8)}, str(tmp_path / "l.safetensors"))
    with pytest.raises(ModelFileError, match="a LoRA, not an image-to-LoRA model"):
        prepare(setup, given={DINOV3: tmp_path / "l.safetensors"})
    (tmp_path / "weights.ckpt").write_bytes(b"pickle")
    with pytest.raises(ModelFileError, match="pickle"):
        prepare(setup, given={DINOV3: tmp_path / "weights.ckpt"})


def test_files_that_do_not_fit_together_are_named(setup, tmp_path):
    other = tiny.write_files(tmp_path, "comfyui", hyper=tiny.hypernetwork_tensors(100))
    with pytest.raises(ModelFileError, match=r"reads pictures described by 100 numbers, but the encoders give "
                                             r"192 \(SigLIP2\) \+ 256 \(DINOv3\) = 448"):
        prepare(setup, given={HYPERNETWORK: other[HYPERNETWORK]})


def test_wrong_shapes_are_named(setup, tmp_path):
    _, paths, _, _ = setup
    from safetensors.torch import load_file

    sd = load_file(str(paths[DINOV3]))
    sd["layer.1.mlp.up_proj.weight"] = torch.zeros(7, 256)
    save_file(sd, str(tmp_path / "damaged.safetensors"))
    with pytest.raises(ModelFileError, match=r"does not fit a DINOv3-7B image encoder: 1 tensor\(s\) of the wrong "
                                             r"shape \(model.layer.1.mlp.up_proj.weight \(7, 256\) \(expected \(512, 256\)"):
        prepare(setup, given={DINOV3: tmp_path / "damaged.safetensors"})


def test_missing_files_say_where_to_put_them(setup, tmp_path):
    loc = FileLocator(tmp_path / "empty", offline=True)
    req = prepare(setup, locator=loc)  # nothing on disk yet: the request is fine, the job downloads
    lines = F.status(loc)
    assert [s.path for s in lines] == [None, None, None]
    assert "to download (13.4 GB)" in lines[1].line()
    with pytest.raises(DownloadError) as err:
        R.make_lora(req, loc, "cpu")
    text = str(err.value)
    assert "SigLIP2-G384 image encoder (2.3 GB) from DiffSynth-Studio/General-Image-Encoders" in text
    assert str(tmp_path / "empty" / "DiffSynth-Studio/General-Image-Encoders/SigLIP2-G384/model.safetensors") in text
    assert "<ComfyUI>/models/I2L/CLIPS/SigLIP2-G384.safetensors" in text and "--siglip2 FILE" in text


def test_both_layouts_are_found(tmp_path):
    diffsynth = tiny.write_files(tmp_path / "ckpts", "diffsynth")
    comfy = tiny.write_files(tmp_path / "ComfyUI" / "models", "comfyui")
    assert comfy[DINOV3] == tmp_path / "ComfyUI/models/I2L/CLIPS/DINOv3-7B.safetensors"
    assert comfy[HYPERNETWORK] == tmp_path / "ComfyUI/models/I2L/Z-Image/Z-Image-i2L.safetensors"
    found = F.status(FileLocator(tmp_path / "elsewhere", tmp_path / "ComfyUI" / "models", offline=True))
    assert [s.path for s in found] == [comfy[r] for r in (SIGLIP2, DINOV3, HYPERNETWORK)]
    found = F.status(FileLocator(tmp_path / "ckpts", tmp_path / "ComfyUI" / "models", offline=True))
    assert [s.path for s in found] == [diffsynth[r] for r in (SIGLIP2, DINOV3, HYPERNETWORK)]  # own copies first
    clone = tmp_path / "clone" / "General-Image-Encoders" / "DINOv3-7B"
    clone.mkdir(parents=True)
    (clone / "model.safetensors").write_bytes(diffsynth[DINOV3].read_bytes())
    assert F.status(FileLocator(tmp_path / "clone", offline=True))[1].path == clone / "model.safetensors"
