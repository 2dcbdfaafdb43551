"""The training's parts without a model: buckets, captions and the dataset's bad inputs, settings, noise levels,
checkpoints (no pickle) and never-overwriting atomic output."""

import math

import pytest
import torch

from engine.errors import ModelFileError, SettingsError, UserError
from engine.training import buckets, dataset
from engine.training import checkpoint as C
from engine.training.output import write_new, write_replacing
from engine.training.settings import TrainSettings, parse_resolutions
from engine.training.timesteps import NoiseLevels, bell_weights, sigma_grid
from tests.train_data import picture, two_images


# ---- buckets ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(256, 256), (320, 256), (4000, 3000), (3000, 4000), (1920, 1080), (5000, 500),
                                  (300, 1200)])
@pytest.mark.parametrize("resolution", [256, 512, 768, 1024])
def test_buckets_are_multiples_of_32_within_the_area_and_near_the_aspect(size, resolution):
    w, h = buckets.bucket_size(*size, resolution)
    assert w % 32 == 0 and h % 32 == 0 and w * h <= resolution**2
    aspect = min(4.0, max(0.25, size[0] / size[1]))
    # no other pair of multiples of 32 within the area has an aspect ratio nearer the image's
    err = abs(math.log(w / h) - math.log(aspect))
    for other_w in range(32, 4 * resolution, 32):
        other_h = resolution**2 // other_w // 32 * 32
        if other_h >= 32:
            assert abs(math.log(other_w / other_h) - math.log(aspect)) >= err - 1e-9
    assert w * h >= 0.75 * resolution**2 or resolution == 256  # close to the asked pixel count


def test_square_and_resolution_choice():
    assert buckets.bucket_size(1000, 1000, 512) == (512, 512)
    assert buckets.resolutions_for(1024, 768, (512, 768, 1024)) == [512, 768]  # no upscaling to 1024
    assert buckets.resolutions_for(300, 300, (512, 768)) == [512]  # the smallest always


def test_fit_downscales_huge_images_to_the_bucket():
    big = picture((10, 200, 10), (3000, 2000))
    out = buckets.fit(big, buckets.bucket_size(3000, 2000, 512))
    assert out.size == (608, 416) and out.mode == "RGB"


# ---- the dataset -----------------------------------------------------------------------------------------

def test_captions_trigger_fallback_and_placeholder(tmp_path):
    two_images(tmp_path)
    picture((0, 120, 0), seed=3).save(tmp_path / "img2.jpg")
    (tmp_path / "img2.txt").write_text("   \n", encoding="utf-8")  # empty: the trigger stands in
    data = dataset.scan(tmp_path, trigger="zzt")
    by_name = {i.path.name: i for i in data.items}
    assert by_name["img0.png"].caption == "a red card with a white bar, zzt" and by_name["img0.png"].caption_file
    assert by_name["img1.png"].caption == "zzt" and not by_name["img1.png"].caption_file
    assert by_name["img2.jpg"].caption == "zzt"
    assert any("2 image(s) have no caption" in n and "'zzt'" in n for n in data.notes)
    no_trigger = dataset.scan(tmp_path)
    assert {i.caption for i in no_trigger.items} == {"a red card with a white bar", ""}
    assert any("empty caption" in n and "--trigger" in n for n in no_trigger.notes)


def test_utf8_bom_caption_is_read(tmp_path):
    two_images(tmp_path, caption=None)
    (tmp_path / "img0.txt").write_bytes("\ufeffcafé au lait".encode("utf-8"))
    assert dataset.scan(tmp_path).items[0].caption == "café au lait"


def test_tiny_and_broken_images_are_skipped_with_a_list(tmp_path):
    two_images(tmp_path)
    picture((1, 2, 3), (300, 200)).save(tmp_path / "small.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "notes.md").write_text("ignored")
    data = dataset.scan(tmp_path, "t")
    assert [i.path.name for i in data.items] == ["img0.png", "img1.png"]
    skipped = dict(data.skipped)
    assert "too small (300x200" in skipped["small.png"] and "broken.png" in skipped
    assert any("2 image(s) skipped" in n and "small.png" in n for n in data.notes)


def test_bad_folders_say_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        dataset.scan(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("caption without image")
    with pytest.raises(UserError, match="holds no images"):
        dataset.scan(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    picture((5, 5, 5), (100, 100)).save(bad / "a.png")
    (bad / "b.webp").write_bytes(b"RIFF....WEBPjunk")
    with pytest.raises(UserError, match=r"none of the 2 image\(s\) .* a.png: too small.*b.webp"):
        dataset.scan(bad)


def test_captions_not_utf8_are_refused_by_name(tmp_path):
    two_images(tmp_path, caption=None)
    (tmp_path / "img1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8 text: img1.txt.*UTF-8"):
        dataset.scan(tmp_path)


def test_digest_follows_images_and_captions(tmp_path):
    two_images(tmp_path)
    first = dataset.scan(tmp_path, "t").digest
    assert dataset.scan(tmp_path, "t").digest == first
    (tmp_path / "img1.txt").write_text("blue", encoding="utf-8")
    second = dataset.scan(tmp_path, "t").digest
    assert second != first
    picture((30, 30, 201), (288, 256), seed=2).save(tmp_path / "img1.png")
    assert dataset.scan(tmp_path, "t").digest != second


def test_write_captions_is_atomic_and_stays_in_the_folder(tmp_path):
    two_images(tmp_path)
    dataset.write_captions(tmp_path, {"img1.png": "a blue card", "img0.png": ""})
    assert (tmp_path / "img1.txt").read_text(encoding="utf-8") == "a blue card\n"
    assert not (tmp_path / "img0.txt").exists()  # empty: the trigger word stands in again
    with pytest.raises(UserError, match="not an image in"):
        dataset.write_captions(tmp_path, {"../img0.png": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img0.png", "img1.png", "img1.txt"]


# ---- settings ----------------------------------------------------------------------------------------------

def ok(**kw):
    return TrainSettings(**{"name": "x", "images": "/data", **kw}).validate()


@pytest.mark.parametrize("kw,message", [
    (dict(steps=0), "steps 0 is out of range"), (dict(rank=0), "rank 0 is out of range"),
    (dict(rank=5000), "rank 5000 is out of range .*16 to 32 is usual"),
    (dict(learning_rate="abc"), "learning rate 'abc' is not a number"),
    (dict(learning_rate="nan"), "not a number"), (dict(learning_rate=-1e-4), "learning rate -0.0001 is out of range"),
    (dict(steps=2.5), "steps must be a whole number"), (dict(batch_size=0), "batch size 0"),
    (dict(resolutions="500"), "resolution 500: use multiples of 32"), (dict(resolutions="big"), "'big' is not"),
    (dict(resolutions=""), "no training resolution"), (dict(name="a/b"), "use letters, digits"),
    (dict(name=""), "use letters"), (dict(images=" "), "no dataset folder"), (dict(timesteps="cosine"), "timesteps"),
    (dict(alpha="x"), "alpha 'x' is not a number"),
])
def test_bad_settings_give_one_clear_message(kw, message):
    with pytest.raises(SettingsError, match=message):
        ok(**kw)


def test_settings_canonical_form():
    s = ok(name="my lora.safetensors", learning_rate="2e-4", resolutions="1024, 512,512", sample_prompts="a\n\n b ")
    assert (s.name, s.learning_rate, s.resolutions, s.sample_prompts) == ("my lora", 2e-4, (512, 1024), ("a", "b"))
    assert ok(rank=16).scale == 1.0 and ok(rank=16, alpha=8).scale == 0.5
    assert TrainSettings.from_dict(s.to_dict()) == s
    assert parse_resolutions([768, "512"]) == (512, 768)


# ---- noise levels ----------------------------------------------------------------------------------------

def test_sigma_grid_is_the_shifted_1000_step_schedule():
    grid = sigma_grid(3.0)
    assert len(grid) == 1000 and float(grid[-1]) == 1.0 and torch.all(grid[1:] > grid[:-1])
    s = 0.5
    assert float(grid[499]) == pytest.approx(3 * s / (1 + 2 * s))


def test_bell_weights_mean_one_zero_at_the_end_peak_in_the_middle():
    grid = sigma_grid(3.0)
    w = bell_weights(grid)
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-5) and float(w.min()) == 0.0
    peak = float(grid[int(w.argmax())])
    assert abs(peak - 0.5) < 0.01


def test_noise_levels_are_seeded():
    levels = NoiseLevels(3.0, "weighted")
    a = levels.sample(4, torch.Generator().manual_seed(1))
    b = levels.sample(4, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    uniform = NoiseLevels(3.0, "uniform").sample(4, torch.Generator().manual_seed(1))
    assert torch.equal(uniform[0], a[0]) and torch.all(uniform[1] == 1)


# ---- checkpoints and output ------------------------------------------------------------------------------

def test_checkpoint_round_trip_restores_the_optimizer_exactly(tmp_path):
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for _ in range(3):
        sum((p**2).sum() for p in params).backward()
        opt.step()
        opt.zero_grad()
    ckpt = C.Checkpoint(step=3, settings={"name": "x"}, dataset_hash="abc", lora={"m.down": params[0].detach()},
                        optimizer_name="adamw", optimizer_state=opt.state_dict(), history=[0.5, 0.25, 0.125],
                        rng=C.rng_state())
    path = C.save(tmp_path / "checkpoint.safetensors", ckpt)
    back = C.load(path)
    assert (back.step, back.settings, back.dataset_hash, back.history) == (3, {"name": "x"}, "abc", [0.5, 0.25, 0.125])
    copy = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = torch.optim.AdamW(copy, lr=1e-3)
    opt2.load_state_dict(back.optimizer_state)
    for o in (opt, opt2):
        ps = o.param_groups[0]["params"]
        sum((p**2).sum() for p in ps).backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(params, copy))
    assert not list(tmp_path.glob(".partial*"))


def test_a_checkpoint_is_plain_safetensors_and_others_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(ModelFileError, match="not a training checkpoint"):
        C.load(tmp_path / "lora.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(ModelFileError, match="damaged training checkpoint"):
        C.load(tmp_path / "cut.safetensors")


def test_write_new_never_overwrites(tmp_path):
    t = {"a": torch.ones(2)}
    paths = [write_new(t, tmp_path, "style", {"n": str(i)}) for i in range(3)]
    assert [p.name for p in paths] == ["style.safetensors", "style_2.safetensors", "style_3.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]  # no partial file left


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    path = write_replacing({"a": torch.ones(2)}, tmp_path / "checkpoint.safetensors", {})
    before = path.read_bytes()
    with pytest.raises(Exception):
        write_replacing({"a": torch.ones(2), "b": "not a tensor"}, path, {})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]



# ---- the optimizer -----------------------------------------------------------------------------------------

def test_optimizer_choice_8bit_only_with_bitsandbytes_on_cuda(monkeypatch):
    import sys
    import types

    from engine.training import optim

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not installed
    assert optim.choose("auto", cpu) == "adamw" and optim.choose("auto", cuda) == "adamw"
    with pytest.raises(SettingsError, match="CUDA GPUs only"):
        optim.choose("adamw8bit", cpu)
    with pytest.raises(SettingsError, match="pip install bitsandbytes"):
        optim.choose("adamw8bit", cuda)
    made = []
    fake = types.ModuleType("bitsandbytes")
    fake.optim = types.SimpleNamespace(AdamW8bit=lambda params, **kw: made.append(kw) or "8-bit AdamW")
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    assert optim.choose("auto", cuda) == "adamw8bit" and optim.choose("auto", cpu) == "adamw"
    assert optim.make_optimizer([torch.nn.Parameter(torch.zeros(1))], 1e-4, "adamw8bit") == "8-bit AdamW"
    assert made == [{"lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 1e-4, "eps": 1e-8}]
    assert isinstance(optim.make_optimizer([torch.nn.Parameter(torch.zeros(1))], 1e-4, "adamw"), torch.optim.AdamW)
