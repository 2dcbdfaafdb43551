"""LoRA training end to end on the tiny model (CPU): the loss goes down, the result is used like any other LoRA
(and by diffusers), the training adapter never leaks into samples or the result, resume equals one
uninterrupted run, Stop writes a checkpoint, and bad situations give clear messages."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.errors import Interrupted, UserError
from engine.settings import lora_item
from engine.training.run import prepare, train
from engine.training.settings import TrainSettings
from tests.train_data import MODEL, TARGETS, Ctx, two_images, write_adapter


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, engine):
    """A dataset of two images (one captioned), and a training adapter in ai-toolkit's layout."""
    root = tmp_path_factory.mktemp("train")
    data = two_images(root / "dataset")
    adapter = write_adapter(root / "adapter.safetensors", engine.load(MODEL).transformer)
    return root, data, adapter


@pytest.fixture
def loras(engine, tmp_path, monkeypatch):
    folder = tmp_path / "loras"
    monkeypatch.setitem(engine.lora_dirs, "z_image", folder)
    yield folder
    engine.apply_loras(engine.settings_for(MODEL, prompt="x"))  # detach any LoRA for the other tests


def settings(workspace, tmp_path, **kw) -> TrainSettings:
    root, data, adapter = workspace
    base = dict(name="tiny", images=str(data), model_type=MODEL, trigger="zzt", steps=6, rank=4, learning_rate=1e-2,
                resolutions=(256,), save_every=0, sample_every=0, adapter=str(adapter),
                output_dir=str(tmp_path / "training"))
    return TrainSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(engine, workspace, tmp_path_factory):
    """One run through the job queue (as the CLI and page run it): 12 steps, checkpoints and samples every 6."""
    out = tmp_path_factory.mktemp("trained")
    folder = out / "loras"
    engine.lora_dirs["z_image"] = folder
    s = settings(workspace, out, steps=12, save_every=6, sample_every=6, sample_prompts=("zzt", "a red card"))
    events = list(engine.jobs.run(lambda ctx: engine.train_lora(s, ctx), "tester", "train"))
    del engine.lora_dirs["z_image"]
    return s, events[-1], events[:-1], folder


def image(engine, s, loras=()):
    settings_ = engine.settings_for(MODEL, prompt=s.sample_prompts[0], seed=s.seed, width=256, height=256,
                                    loras=list(loras))
    return np.asarray(engine.generate(settings_)[0].image, dtype=np.int16)


# ---- the result -------------------------------------------------------------------------------------------

def test_result_file_layout_and_metadata(trained, engine):
    s, result, events, folder = trained
    assert result.lora_path == folder / "tiny.safetensors" and result.steps == 12 and len(result.history) == 12
    tensors = load_file(str(result.lora_path))
    modules = [n for n, m in engine.load(MODEL).transformer.named_modules()
               if n.startswith("layers.") and n.split(".", 2)[-1] in TARGETS]
    assert len(modules) == 2 * len(TARGETS)
    # ai-toolkit's layout: diffusion_model.<diffusers name>.lora_A/B.weight + alpha, nothing of the adapter
    assert set(tensors) == {f"diffusion_model.{m}.{k}" for m in modules for k in ("lora_A.weight", "lora_B.weight",
                                                                                   "alpha")}
    assert tensors["diffusion_model.layers.0.attention.to_q.lora_A.weight"].shape == (4, 64)
    assert float(tensors["diffusion_model.layers.1.feed_forward.w2.alpha"]) == 4.0
    with safe_open(str(result.lora_path), "pt") as fh:
        meta = fh.metadata()
    assert meta["base_model"] == MODEL and meta["training_adapter"] == "adapter.safetensors"
    assert (meta["rank"], meta["alpha"], meta["steps"], meta["learning_rate"]) == ("4", "4", "12", "0.01")
    assert meta["resolution"] == "256" and json.loads(meta["trigger_words"]) == ["zzt"]
    assert meta["dataset_size"] == "2" and len(meta["dataset_hash"]) == 64


def test_checkpoints_and_samples_next_to_each_other(trained):
    s, result, events, _ = trained
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("TrainProgress") == 12
    checkpoints = [e for e in events if type(e).__name__ == "TrainCheckpoint"]
    assert [c.step for c in checkpoints] == [6, 12]
    assert all(c.lora.parent == result.run_dir and c.lora.is_file() for c in checkpoints)
    assert [(step, prompt) for step, _, prompt in result.samples] == [(6, "zzt"), (6, "a red card"), (12, "zzt"),
                                                                     (12, "a red card")]
    assert all(p.parent == result.run_dir / "samples" and p.is_file() for _, p, _ in result.samples)
    progress = [e for e in events if type(e).__name__ == "TrainProgress"]
    assert progress[-1].eta_seconds == 0 and progress[0].eta_seconds > 0 and progress[0].bucket == (256, 256)


def test_result_is_in_the_lora_list_changes_the_image_and_strength_zero_is_the_base(trained, engine, loras):
    _, result, _, folder = trained
    engine.lora_dirs["z_image"] = folder
    assert "tiny.safetensors" in engine.lora_library(MODEL).names()
    s = trained[0]
    plain = image(engine, s)
    with_lora = image(engine, s, [lora_item("tiny.safetensors", 1.0)])
    zero = image(engine, s, [lora_item("tiny.safetensors", 0.0)])
    assert np.abs(with_lora - plain).max() > 5
    assert np.array_equal(zero, plain)


def test_last_sample_is_the_app_image_with_the_result_so_no_adapter(trained, engine, loras):
    """Samples are drawn without the training adapter: the final sample equals the app's own image with the
    finished LoRA on the plain model."""
    s, result, _, folder = trained
    engine.lora_dirs["z_image"] = folder
    from PIL import Image

    step, path, prompt = result.samples[-2]  # step 12, the first prompt, seed s.seed
    assert (step, prompt) == (12, s.sample_prompts[0])
    sample = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    ours = image(engine, s, [lora_item("tiny.safetensors", 1.0)])
    assert np.abs(sample - ours).max() <= 1


def test_diffusers_loads_the_result_and_draws_the_same_image(trained, engine, loras, tiny_models, tiny_tokenizer):
    import copy

    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    s, result, _, folder = trained
    engine.lora_dirs["z_image"] = folder
    transformer = copy.deepcopy(tiny_models["transformer"])
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_models["vae"],
                          text_encoder=tiny_models["text_encoder"], tokenizer=tiny_tokenizer, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(result.lora_path))
    assert sum("lora_A" in n for n, _ in transformer.named_parameters()) == 2 * len(TARGETS)
    theirs = np.asarray(pipe(prompt=s.sample_prompts[0], height=256, width=256, num_inference_steps=8,
                             guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(s.seed)).images[0],
                        dtype=np.int16)
    ours = image(engine, s, [lora_item("tiny.safetensors", 1.0)])
    assert np.abs(ours - image(engine, s)).max() > 5  # the LoRA matters ...
    assert np.abs(theirs - ours).max() <= 1  # ... and diffusers applies it as this app does


def comfyui_lora_keys(n_layers: int, n_refiners: int) -> set[str]:
    """The LoRA module names ComfyUI accepts for a Z-Image model, restated from its source: comfy/lora.py
    model_lora_keys_unet (the Lumina2 branch: "diffusion_model.", "transformer.", "lycoris_" and bare forms of
    each weight key) over comfy/utils.py z_image_to_diffusers (diffusers names of the layers and refiners)."""
    block = ["attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0", "feed_forward.w1",
             "feed_forward.w2", "feed_forward.w3", "attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2",
             "attention.norm_q", "attention.norm_k", "adaLN_modulation.0"]
    names = [f"{stack}.{i}.{m}" for stack, n in (("layers", n_layers), ("context_refiner", n_refiners),
                                                  ("noise_refiner", n_refiners)) for i in range(n) for m in block]
    names += ["all_final_layer.2-1.linear", "all_x_embedder.2-1", "cap_embedder.1", "t_embedder.mlp.0",
              "t_embedder.mlp.2"]
    out = set()
    for name in names:
        out |= {f"diffusion_model.{name}", f"transformer.{name}", "lycoris_" + name.replace(".", "_"), name}
    return out


def test_comfyui_maps_every_key_of_the_result(trained):
    """ComfyUI's load_lora consumes `<module>.lora_B.weight` / `.lora_A.weight` / `.alpha` of each mapped module
    and warns "lora key not loaded" about any other key: there must be none."""
    _, result, _, _ = trained
    accepted = comfyui_lora_keys(n_layers=2, n_refiners=1)
    suffixes = (".lora_A.weight", ".lora_B.weight", ".alpha")
    for key in load_file(str(result.lora_path)):
        stem = next((key[: -len(x)] for x in suffixes if key.endswith(x)), None)
        assert stem in accepted, f"ComfyUI would not load {key}"


# ---- training itself --------------------------------------------------------------------------------------

def eval_loss(run) -> float:
    """Flow-matching loss on the cached latents at fixed noise and 8 fixed noise levels."""
    loop, gen, total, n = run.loop, torch.Generator().manual_seed(123), 0.0, 0
    with torch.no_grad():
        for k in range(8):
            for sample in loop.batches.samples:
                x0 = sample.latent[None]
                noise = torch.randn(x0.shape, generator=gen)
                sigma = torch.tensor([(k + 0.5) / 8])
                pred = run.backend.predict((1 - sigma) * x0 + sigma * noise, sigma, [loop.captions[sample.caption]])
                total, n = total + float(((pred - (noise - x0)) ** 2).mean()), n + 1
    return total / n


def test_loss_goes_down(engine, workspace, tmp_path):
    run = prepare(engine, settings(workspace, tmp_path, steps=30, adapter="none", timesteps="uniform"), Ctx())
    before = eval_loss(run)
    run.loop.guarded()
    after = eval_loss(run)
    assert after < 0.9 * before
    history = run.loop.history
    assert np.mean(history[-10:]) < np.mean(history[:10])


def test_resume_after_stop_equals_one_uninterrupted_run(engine, workspace, tmp_path):
    whole = prepare(engine, settings(workspace, tmp_path / "a", steps=8), Ctx())
    whole.loop.guarded()

    first = prepare(engine, settings(workspace, tmp_path / "b", steps=8), Ctx(stop_at=3))
    with pytest.raises(Interrupted, match="stopped at step 3 of 8.*--resume"):
        first.loop.guarded()
    assert (tmp_path / "b" / "training" / "tiny" / "checkpoint.safetensors").is_file()
    again = prepare(engine, settings(workspace, tmp_path / "b", steps=8, resume=True), Ctx())
    assert again.loop.step == 3 and again.loop.history == first.loop.history
    again.loop.guarded()

    assert again.loop.history == whole.loop.history
    for key, value in whole.loop.lora.tensors().items():
        assert torch.equal(value, again.loop.lora.tensors()[key]), key
    a, b = whole.loop.optimizer.state_dict()["state"], again.loop.optimizer.state_dict()["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)


def test_stop_through_the_job_queue_writes_a_resumable_checkpoint(engine, workspace, tmp_path, loras):
    from engine.training.events import TrainProgress

    s = settings(workspace, tmp_path, steps=500)
    job = engine.jobs.submit(lambda ctx: engine.train_lora(s, ctx), "alice", "train")
    other = engine.jobs.stop("bob")  # someone else's Stop does not touch it
    for event in job.events():
        if isinstance(event, TrainProgress) and event.step >= 2:
            assert engine.jobs.stop("alice")
    with pytest.raises(Interrupted, match="--resume"):
        job.outcome()
    assert not other
    checkpoint = tmp_path / "training" / "tiny" / "checkpoint.safetensors"
    from engine.training import checkpoint as C

    step = C.load(checkpoint).step
    assert 2 <= step < 500 and (tmp_path / "training" / "tiny" / f"tiny_step{step:06d}.safetensors").is_file()
    assert not loras.exists() or not list(loras.glob("*.safetensors"))  # no half result in the LoRA folder


def test_stop_with_the_last_step_still_writes_the_lora(engine, workspace, tmp_path, loras):
    ctx = Ctx(stop_at=3)  # Stop arrives while the last step reports its progress
    result = train(engine, settings(workspace, tmp_path, steps=3), ctx)
    assert result.steps == 3 and result.lora_path.is_file()


def test_a_name_in_use_is_refused_or_suffixed(engine, workspace, tmp_path, loras):
    s = settings(workspace, tmp_path, steps=2)
    (loras / "tiny.safetensors").parent.mkdir(parents=True, exist_ok=True)
    (loras / "tiny.safetensors").write_bytes(b"someone else's file")
    ctx = Ctx()
    result = train(engine, s, ctx)
    assert result.lora_path.name == "tiny_2.safetensors" and result.lora_name == "tiny_2.safetensors"
    assert (loras / "tiny.safetensors").read_bytes() == b"someone else's file"
    assert any("tiny_2.safetensors" in n for n in ctx.notes)
    with pytest.raises(UserError, match="named 'tiny' exists .*at step 2.*--resume"):
        train(engine, s, Ctx())
    with pytest.raises(UserError, match="at step 2 already: give --steps above 2"):
        train(engine, dataclasses.replace(s, resume=True), Ctx())
    result = train(engine, dataclasses.replace(s, resume=True, steps=3), Ctx())
    assert result.steps == 3 and result.lora_path.name == "tiny_3.safetensors"


def test_resume_needs_a_checkpoint_and_the_same_dataset(engine, workspace, tmp_path, loras):
    s = settings(workspace, tmp_path, steps=2, images=str(two_images(tmp_path / "data")))
    with pytest.raises(UserError, match="nothing to resume"):
        train(engine, dataclasses.replace(s, resume=True), Ctx())
    train(engine, s, Ctx())
    (tmp_path / "data" / "img1.txt").write_text("a new caption", encoding="utf-8")
    with pytest.raises(UserError, match="changed since the checkpoint"):
        train(engine, dataclasses.replace(s, resume=True, steps=4), Ctx())


def test_unwritable_output_folder_is_refused_before_any_work(engine, workspace, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setitem(engine.lora_dirs, "z_image", blocker / "loras")
    ctx = Ctx()
    with pytest.raises(UserError, match="LoRA folder .* not a folder this app can write to"):
        train(engine, settings(workspace, tmp_path), ctx)
    assert ctx.stages == []


def test_out_of_memory_says_what_to_lower_and_keeps_a_checkpoint(engine, workspace, tmp_path, loras, monkeypatch):
    from models.z_image.training import ZImageTrainer

    real, calls = ZImageTrainer.predict, []

    def predict(self, *a):
        calls.append(1)
        if len(calls) == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *a)

    monkeypatch.setattr(ZImageTrainer, "predict", predict)
    with pytest.raises(UserError, match=r"out of GPU memory at step 3 .*lower --resolution or --batch.*int8.*"
                                        r"checkpoint of step 2 was written"):
        train(engine, settings(workspace, tmp_path, steps=5), Ctx())
    from engine.training import checkpoint as C

    assert C.load(tmp_path / "training" / "tiny" / "checkpoint.safetensors").step == 2


def test_base_model_trains_without_adapter_and_turbo_without_one_is_warned(engine, workspace, tmp_path, loras,
                                                                         monkeypatch):
    ctx = Ctx()
    train(engine, settings(workspace, tmp_path / "turbo", steps=1, adapter="none"), ctx)
    assert any("without the training adapter" in n for n in ctx.notes)
    monkeypatch.setitem(engine.registry.types[MODEL].model, "architecture", "z_image_base")
    ctx = Ctx()
    result = train(engine, settings(workspace, tmp_path / "base", steps=1, adapter="auto", name="base"), ctx)
    with safe_open(str(result.lora_path), "pt") as fh:
        assert fh.metadata()["training_adapter"] == "none"
    assert not any("adapter" in n for n in ctx.notes)
