"""Text-to-image for Z-Image: encode -> noise -> sampler(model_fn) -> decode.

The denoising loop is the project's own (engine.sampling.samplers); guidance is composed into `model_fn` here,
so additions (NAG, per-step LoRA strengths, control) wrap the same function.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from engine import jobs, numerics
from engine.lora.apply import cfg_batch, scheduled
from engine.placement.memory import MemoryMonitor, log_report
from engine.sampling.samplers import SAMPLERS
from engine.sampling.schedules import SCHEDULES, rescale, twinflow_times
from engine.sampling.windows import StepWindow
from engine.settings import GenerationSettings
from models.z_image.config import VAE_SCALE
from models.z_image.control import add_control, output_size
from models.z_image.lora import cfg_rows


@dataclass
class ZImageModel:
    """A loaded model type: the three components plus what the PNG record needs."""

    model_type: str
    transformer: torch.nn.Module
    encoder: "PromptEncoder"  # noqa: F821 (models.z_image.text)
    vae: torch.nn.Module
    dtype: torch.dtype
    device: torch.device
    files: dict = field(default_factory=dict)
    passes: int = 0  # transformer forward passes, for the benchmark and tests
    preview_projection: torch.Tensor | None = None  # latent -> RGB map for live previews, fitted on first use
    loras: object = None  # engine.lora.apply.LoraStack once a LoRA was attached (models/z_image/lora.py)
    placement: object = None  # engine.placement.offload.Placement: the memory profile applied, if any
    load_info: dict = field(default_factory=dict)  # file kinds and profile, for the PNG record
    control: object = None  # models.z_image.control.ControlModule for control model types


@dataclass
class GeneratedImage:
    image: object  # PIL.Image
    settings: GenerationSettings  # the exact settings that reproduce this image (its run's seed)
    batch_index: int
    memory: dict = field(default_factory=dict)  # peak RAM/VRAM per stage of the call that made it
    passes: list = field(default_factory=list)  # each denoising pass: size, steps run, strength (for the PNG)
    notes: list = field(default_factory=list)  # worth telling the user (e.g. a picture scaled to fit)


def initial_noise(settings: GenerationSettings, generator: torch.Generator, channels: int) -> torch.Tensor:
    """[B, C, H/8, W/8] float32 Gaussian noise from a CPU generator, as diffusers' randn_tensor makes it.

    The generator (seeded with the image seed) then goes on to the sampler for any fresh noise it needs."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = (settings.batch_size, channels, settings.height // VAE_SCALE, settings.width // VAE_SCALE)
    return randn_tensor(shape, generator=generator, dtype=torch.float32)


def _transformer_pass(model: ZImageModel, x: torch.Tensor, t: torch.Tensor, captions) -> torch.Tensor:
    """x [B, C, H, W], model time t [B] (1 = clean) -> the model's output negated, [B, C, H, W] float32."""
    inputs = list(x.to(model.dtype).unsqueeze(2).unbind(0))
    out = model.transformer(inputs, t, captions, return_dict=False)[0]
    model.passes += 1
    return -torch.stack([o.float() for o in out]).squeeze(2)


def flow(model: ZImageModel, x: torch.Tensor, sigma: torch.Tensor, captions: list[torch.Tensor]) -> torch.Tensor:
    """One transformer pass. x: [B, C, H, W]; captions: B tensors [tokens, hidden]; returns v [B, C, H, W]."""
    timestep = sigma * 1000  # via diffusers' timestep scale, so its rounding matches ZImagePipeline's
    t = ((1000 - timestep) / 1000).expand(x.shape[0]).to(x.device)
    return _transformer_pass(model, x, t, captions)


def make_twinflow_fn(model: ZImageModel, captions):
    """model_fn(x, t, target) -> F = noise - clean, for TwinFlow's unified sampler (engine.sampling.samplers).

    t, target: sampler times (1 = noise, 0 = clean); the transformer gets model time |t_m| and, through
    its second time embedder, the jump to the target (models.z_image.twinflow)."""
    from models.z_image.twinflow import model_time, target_time

    def model_fn(x, t, target):
        batch = x.shape[0]
        t_m = model_time(t.reshape(1)).expand(batch).to(x.device)
        tt_m = model_time(target.reshape(1)).expand(batch).to(x.device)
        with target_time(model.transformer, t_m, tt_m):
            return _transformer_pass(model, x, t_m.abs(), captions(t))

    return model_fn


def varied_captions(cond: torch.Tensor, settings: GenerationSettings, seed: int, schedule: torch.Tensor):
    """captions(sigma) -> B caption tensors; seed variance puts seeded noise on the embedding [tokens, dim]
    for the first `seed_variance_steps` of the steps, so seeds differ more in composition."""
    plain = [cond] * settings.batch_size
    if settings.seed_variance <= 0 or settings.seed_variance_steps <= 0:
        return lambda sigma: plain
    gen = torch.Generator("cpu").manual_seed((seed + 0x5EED) % 2**63)  # not the image noise's stream
    shape = (settings.batch_size, *cond.shape)
    noise = torch.randn(shape, generator=gen)
    keep = torch.rand(shape, generator=gen) < settings.seed_variance_fraction
    scale = settings.seed_variance * cond.float().std().cpu()
    varied = [cond + (noise[b] * keep[b] * scale).to(cond.device, cond.dtype) for b in range(shape[0])]
    window = StepWindow(0.0, settings.seed_variance_steps)
    return lambda sigma: varied if window.covers_call(schedule, sigma) else plain


def make_model_fn(model: ZImageModel, settings: GenerationSettings, captions, uncond):
    """model_fn(x, sigma) -> v with classifier-free guidance composed in (positive and negative batched).
    `captions(sigma)` gives the positive caption per batch element."""
    w = settings.guidance_scale

    def model_fn(x, sigma):
        batch = x.shape[0]
        cond = captions(sigma)
        if uncond is None or not settings.cfg_on or (1 - float(sigma)) > settings.cfg_truncation:
            return flow(model, x, sigma, cond)
        with cfg_batch(model.loras, cfg_rows(model, x, cond, uncond)):  # positive-only LoRAs: first half only
            both = flow(model, torch.cat([x, x]), sigma, cond + [uncond] * batch)
        pos, neg = both[:batch], both[batch:]
        return normalize_guided(pos, pos + w * (pos - neg), settings.cfg_normalization)

    return model_fn


def normalize_guided(pos: torch.Tensor, guided: torch.Tensor, k: float) -> torch.Tensor:
    """Cap each sample's guided-prediction norm at k times the positive prediction's (k = 0: off)."""
    if k <= 0:
        return guided
    dims = tuple(range(1, pos.dim()))
    limit = torch.linalg.vector_norm(pos, dim=dims, keepdim=True) * k
    norm = torch.linalg.vector_norm(guided, dim=dims, keepdim=True)
    return torch.where(norm > limit, guided * (limit / norm), guided)


def decode(model: ZImageModel, latents: torch.Tensor) -> list:
    """Latents [B, 16, h, w] -> PIL images, as diffusers' VaeImageProcessor post-processes them (tiled when big)."""
    from models.z_image.vae import decode as vae_decode

    return vae_decode(model, latents)


def schedule_for(settings: GenerationSettings, device) -> torch.Tensor:
    """The sampler's descending sigmas (flow samplers, on `device`) or times (TwinFlow), ending at 0."""
    if SAMPLERS[settings.sampler].time_target:
        return twinflow_times(settings.num_inference_steps)  # float64 on the CPU: the sampler reads floats
    sigmas = SCHEDULES[settings.scheduler](settings.num_inference_steps, settings.flow_shift)
    return rescale(sigmas, settings.sigma_rescale).to(device)


def make_nag(model: ZImageModel, settings: GenerationSettings, negative):
    """NAG for this generation, or None; it refines the negative caption once and serves every run."""
    if not settings.nag_on:
        return None
    from models.z_image.nag import NegativeAttentionGuidance

    control = getattr(model, "control", None)
    blocks = control.net.control_layers if control is not None and settings.control_image else ()
    return NegativeAttentionGuidance(model.transformer, negative, settings.nag_scale, settings.nag_tau,
                                     settings.nag_alpha, settings.nag_start, settings.nag_end, blocks)


def compose_model_fn(model: ZImageModel, settings: GenerationSettings, captions, negative, schedule, nag=None,
                     control=None):
    """The sampler's model_fn: TwinFlow's, or the flow one with CFG; NAG around either; then control hints
    (and inpaint; `control`: this pass's ControlInputs, else the settings' pictures); LoRA strengths set per
    step around all."""
    if SAMPLERS[settings.sampler].time_target:
        model_fn = make_twinflow_fn(model, captions)
    else:
        model_fn = make_model_fn(model, settings, captions, negative if settings.cfg_on else None)
    if nag is not None:
        model_fn = nag.wrap(model_fn, schedule)
    model_fn = add_control(model, settings, schedule, model_fn, control)
    model_fn = scheduled(model_fn, model.loras, settings.loras, schedule)
    # a NaN/inf prediction stops the sampler at once (engine.numerics), rather than ending as a black PNG
    return numerics.guard_model_fn(model_fn, model.dtype, bool(settings.loras), settings.num_inference_steps)


@torch.no_grad()
def generate(model: ZImageModel, settings: GenerationSettings, callback=None, upscalers=None) \
        -> list[GeneratedImage]:
    """All images for `settings` (count runs of batch_size images, seeds seed, seed+1, ...): from text, or from
    an init image (img2img, inpaint, outpaint, upscale; models.z_image.images_in), with the hires fix."""
    from models.z_image import images_in
    from models.z_image.passes import Conditioning

    settings = settings.with_seed()
    if not settings.init_image:
        settings = output_size(settings)  # control_fit "image" takes the control image's aspect ratio
    memory = MemoryMonitor(model.device)
    work = images_in.prepare(model, settings, upscalers)
    with_negative = settings.cfg_on or settings.nag_on
    prompts = [settings.prompt] + ([settings.negative_prompt] if with_negative else [])
    jobs.stage("encoding the prompt")
    with memory.stage("text encoding"):
        # the text encoder may sit on a device of its own (LoadOptions.text_encoder_device)
        feats = [f.to(model.device) for f in model.encoder.encode(prompts, settings.text_hidden_layer)]
    if not all(numerics.finite(f) for f in feats):
        raise numerics.GenerationError("the text encoder returned NaN/inf values: nothing was generated. Likely: "
                                       + numerics.advice(model.dtype, what="the text encoder"))
    negative = feats[1] if with_negative else None
    tools = SimpleNamespace(compose=compose_model_fn, noise=initial_noise, captions=varied_captions,
                            schedule=schedule_for, decode=decode)
    cond = Conditioning(model, tools, settings, feats[0], negative, make_nag(model, settings, negative), upscalers,
                        memory)
    results = []
    for run in range(settings.count):
        seed = settings.seed + run
        images, passes = images_in.run(cond, work, seed, callback, run)
        run_settings = dataclasses.replace(settings, seed=seed, count=1)
        results += [GeneratedImage(img, run_settings, b, passes=passes) for b, img in enumerate(images)]
    report = memory.as_dict()
    log_report(report)
    for result in results:
        result.memory = report
        result.notes = list(work.notes)
    return results
