"""Fun-ControlNet-Union at run time: the control latents, and the control blocks run inside the transformer pass.

diffusers' ZImageControlNetModel.forward repeats the transformer's embedders and refiners to compute its
hints, and for 2.x its noise-refiner hints never reach the transformer. Here the control blocks run inside
the transformer's own pass instead, through forward hooks, as the reference (VideoX-Fun) does:
- noise-refiner stage: the control tokens are refined (1.0: plain blocks), or (2.x) refiner-stage control
  blocks run beside the noise refiner and their hints are added after its layers;
- main stage: the control layers run on [control tokens, caption tokens] beside the unified sequence, each
  right after its host layer, whose output gets the hint.
So a pass runs only the control blocks on top of the transformer's own (1.0: 2 + 6, 2.1: 2 + 15; 2.0 runs its
15 control layers at both stages, as that version was trained), and holds one hint at a time.
Control is composed into model_fn: a weight, and the fraction of steps where it is active; inpaint pins the
kept latents to the picture's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from engine.sampling.windows import StepWindow
from engine.settings import GenerationSettings
from models.z_image.control_keys import REFINER_PLAIN, REFINER_REPEAT, ControlSpec
from models.z_image.passes import keep_known, keep_mask
from models.z_image.vae import encode_mode, pixels

PATCH = "2-1"  # the transformer's patch size 2, frame patch 1


@dataclass
class ControlModule:
    """A loaded control module and where its preprocessors' weights are found."""

    net: torch.nn.Module  # diffusers ZImageControlNetModel, sharing the transformer's modules
    spec: ControlSpec
    locator: object  # engine.weights.files.FileLocator
    blocks_run: int = 0  # control blocks run so far, for the benchmark and tests
    hooks: "ControlHooks | None" = None

    @classmethod
    def attach(cls, net, spec: ControlSpec, locator, transformer) -> "ControlModule":
        module = cls(net, spec, locator)
        module.hooks = ControlHooks(module, transformer)
        return module


@dataclass
class ControlInputs:
    """What one generation is conditioned on. Latent tensors are [1, C, h, w] with h, w = size / 8."""

    picture: object  # PIL RGB at the output size (the user's image, fitted)
    control_map: object  # PIL RGB at the output size (the map the model sees)
    mask: object | None  # PIL L at the output size, white = repaint
    context: torch.Tensor | None = None  # [C_in, 1, h, w]: control latent (+ keep mask + masked-image latent)
    keep: torch.Tensor | None = None  # [1, 1, h, w], 1 where the picture is kept (inpaint)
    known: torch.Tensor | None = None  # [1, 16, h, w], the picture's latent (inpaint)


# ---- pictures --------------------------------------------------------------------------------------

def output_size(settings: GenerationSettings) -> GenerationSettings:
    """Settings with the output size taken from the control image's aspect ratio when control_fit is "image"."""
    if not settings.control_image or settings.control_fit != "image":
        return settings
    from engine.images.io import open_user_image, size_for_aspect

    w, h = size_for_aspect(open_user_image(settings.control_image, "control image").size, settings.width,
                           settings.height)
    return dataclasses.replace(settings, width=w, height=h)


def pictures(settings: GenerationSettings, locator, device) -> ControlInputs:
    """The fitted picture, its control map and the fitted mask, all at the settings' output size."""
    from PIL import Image

    from engine.images.io import fit_image, load_mask, load_rgb
    from engine.images.preprocess import control_map

    size = (settings.width, settings.height)
    picture = fit_image(load_rgb(settings.control_image, "control image"), *size, settings.control_fit)
    if settings.control_mode == "none":
        cmap = Image.new("RGB", size)  # inpaint only: an empty map
    else:
        cmap = control_map(picture, settings.control_mode, settings, locator, device)
    mask = None
    if settings.mask:  # padding added by "fit" is repainted (outpainting)
        mask = fit_image(load_mask(settings.mask), *size, settings.control_fit, fill=255)
    return ControlInputs(picture, cmap, mask)


# ---- latents ---------------------------------------------------------------------------------------

@torch.no_grad()
def encode_inputs(model, inputs: ControlInputs, spec: ControlSpec, pin: bool = True) -> ControlInputs:
    """Fill the latents: context = [control latent] (1.0) or [control latent, keep mask, masked-image latent]
    (2.x), unless an earlier run of the same request encoded them already; with `pin` (inpaint from the
    settings' own pictures) also `keep` and `known`, which only keep_known uses."""
    if inputs.context is None:
        inputs.context = _context(model, inputs, spec)
    if pin and spec.inpaint and inputs.mask is not None and inputs.known is None:
        picture = pixels(inputs.picture, model)
        inputs.keep = keep_mask(inputs.mask, inputs.context.shape[-2:]).to(picture.device)
        inputs.known = encode_mode(model, picture)
    return inputs


def _context(model, inputs: ControlInputs, spec: ControlSpec) -> torch.Tensor:
    """[C_in, 1, h, w] in the model's dtype, as the transformer takes x."""
    control = encode_mode(model, pixels(inputs.control_map, model))
    if not spec.inpaint:
        context = control
    elif inputs.mask is None:
        context = torch.cat([control, torch.zeros_like(control[:, :1]), torch.zeros_like(control)], dim=1)
    else:
        picture = pixels(inputs.picture, model)
        masked = encode_mode(model, picture * keep_mask(inputs.mask, picture.shape[-2:]).to(picture))
        keep = keep_mask(inputs.mask, control.shape[-2:]).to(control.device)
        context = torch.cat([control, keep, masked], dim=1)
    return context[0].unsqueeze(1).to(model.dtype)


# ---- the control blocks inside the transformer pass ------------------------------------------------

class _Chain:
    """Control blocks run one at a time beside the host layers, so only the current hint is held.

    diffusers' blocks stack every earlier hint into their output; fed a one-hint stack instead, each block
    returns just [its hint, the carried control state].
    """

    def __init__(self, control: ControlModule, blocks, c, x, mask, freqs, adaln):
        self.control, self.blocks, self.c = control, blocks, c
        self.args = (x, mask, freqs, adaln)
        self.done = 0
        self.hint = None

    def run_to(self, n: int) -> torch.Tensor:
        """The hint of block n (running the blocks before it that have not run yet)."""
        while self.done <= n:
            block = self.blocks[self.done]
            out = block(self.c if block.block_id == 0 else self.c.unsqueeze(0), *self.args)
            self.hint, self.c = out[0], out[1]
            self.done += 1
            self.control.blocks_run += 1
        return self.hint

    def finish(self) -> torch.Tensor:
        if self.done < len(self.blocks):
            self.run_to(len(self.blocks) - 1)
        return self.c


class ControlHooks:
    """Forward hooks on the transformer that run the control blocks while `scale` is non-zero.

    Attached once when the model loads; with scale 0 they do nothing, so the pass is the transformer's own.
    Each control block runs right after its host layer (the control chain depends only on the stage's input),
    and every per-pass tensor is dropped when the pass ends.
    """

    def __init__(self, control: ControlModule, transformer):
        self.control, self.transformer = control, transformer
        self.scale = 0.0
        self.context: torch.Tensor | None = None  # [C_in, 1, h, w]
        self._tokens: torch.Tensor | None = None
        self._refiner: _Chain | None = None
        self._main: _Chain | None = None
        self._carried: torch.Tensor | None = None
        self.handles = self._attach()

    def _attach(self) -> list:
        net, tr = self.control.net, self.transformer
        handles = [tr.noise_refiner[0].register_forward_pre_hook(self._refiner_stage),
                   tr.layers[0].register_forward_pre_hook(self._main_stage),
                   tr.register_forward_hook(self._end_of_pass)]
        for n, i in enumerate(net.control_refiner_layers_places or []):
            handles.append(tr.noise_refiner[i].register_forward_hook(self._adder("_refiner", n)))
        for n, i in enumerate(net.control_layers_places):
            handles.append(tr.layers[i].register_forward_hook(self._adder("_main", n)))
        return handles

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def set_context(self, context: torch.Tensor) -> None:
        self.context, self._tokens = context, None

    def _adder(self, chain: str, n: int):
        def add(_module, _args, output):
            running = getattr(self, chain)
            return output + running.run_to(n) * self.scale if self.scale and running is not None else output
        return add

    def tokens(self, batch: int, dtype) -> torch.Tensor:
        """The embedded control input [batch, L, dim], pad rows set to the transformer's pad token (cached)."""
        if self._tokens is None:
            net, c = self.control.net, self.context
            feats = net.patchify([c], 2, 1)[0]
            real = (c.shape[1] * c.shape[2] * c.shape[3]) // 4
            tokens = net.control_all_x_embedder[PATCH](feats.to(dtype))
            tokens[real:] = net.x_pad_token.to(dtype)
            self._tokens = tokens
        return self._tokens.unsqueeze(0).expand(batch, -1, -1)

    def _refiner_stage(self, _module, args):
        """Before the noise refiner: x [B, L, dim] embedded image tokens, mask, RoPE, time embedding."""
        self._end_of_pass()
        if not self.scale:
            return
        x, mask, freqs, adaln = args[:4]
        net, spec = self.control.net, self.control.spec
        c = self.tokens(x.shape[0], x.dtype)
        if spec.refiner is REFINER_PLAIN:  # 1.0: the control tokens are refined on their own
            for block in net.control_noise_refiner:
                c = block(c, mask, freqs, adaln)
            self.control.blocks_run += len(net.control_noise_refiner)
            self._carried = c
        else:  # 2.x: control blocks beside the noise refiner, their hints added to it
            blocks = net.control_layers if spec.refiner == REFINER_REPEAT else net.control_noise_refiner
            self._refiner = _Chain(self.control, blocks, c, x, mask, freqs, adaln)

    def _main_stage(self, _module, args):
        """Before the main layers: unified [B, L + caption, dim] = [image tokens, caption tokens]."""
        if not self.scale:
            return
        unified, mask, freqs, adaln = args[:4]
        carried = self._refiner.finish() if self._refiner is not None else self._carried
        self._refiner = self._carried = None
        c = torch.cat([carried, unified[:, carried.shape[1]:]], dim=1)
        self._main = _Chain(self.control, self.control.net.control_layers, c, unified, mask, freqs, adaln)

    def _end_of_pass(self, *_):
        self._refiner = self._main = self._carried = None


def with_control(model_fn, hooks: ControlHooks, settings: GenerationSettings, sigmas: torch.Tensor):
    """model_fn with the control hints at `control_weight` on the steps in [control_start, control_end)."""
    window = StepWindow(settings.control_start, settings.control_end)

    def fn(x, sigma):
        on = settings.control_weight > 0 and window.covers_call(sigmas, sigma)
        hooks.scale = settings.control_weight if on else 0.0
        try:
            return model_fn(x, sigma)
        finally:
            hooks.scale = 0.0
    return fn


def add_control(model, settings: GenerationSettings, sigmas: torch.Tensor, model_fn, inputs=None):
    """model_fn with the settings' control (and inpaint) composed in; unchanged without a control image.
    `inputs`: this pass's ControlInputs (an init image's canvas or tile; its inpaint keeps latents itself),
    else the settings' control picture and mask."""
    control = getattr(model, "control", None)
    if control is None or not settings.control_image:
        return model_fn
    own = inputs is None
    inputs = encode_inputs(model, inputs or pictures(settings, control.locator, model.device), control.spec, pin=own)
    control.hooks.set_context(inputs.context)
    model_fn = with_control(model_fn, control.hooks, settings, sigmas)
    return keep_known(model_fn, inputs.keep, inputs.known) if own and inputs.keep is not None else model_fn
