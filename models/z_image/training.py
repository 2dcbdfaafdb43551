"""Z-Image's side of LoRA training (engine/training/run.py drives it).

Conventions, as ai-toolkit, DiffSynth-Studio and diffusers' train_dreambooth_lora_z_image.py have them: the
transformer takes model time 1 - sigma and its output, negated, is the velocity noise - x0; latents are
(VAE mode - shift_factor) * scaling_factor. Turbo is distilled: ostris' training adapter (a LoRA) is attached
at +1 while training and left out of samples and of the result, so the new LoRA learns the subject and not
to undo the distillation. Attached with the app's forward hooks, it never touches the base weights (so an
INT8 base works too, and detaching restores the model bit for bit).

Trained layers: attention to_q, to_k, to_v, to_out.0 and feed_forward w1, w2, w3 of the main layers (and of
the refiners if asked). The file keys are `diffusion_model.<diffusers module>.lora_A/lora_B.weight` plus
`.alpha`: what ai-toolkit writes, what diffusers' ZImagePipeline.load_lora_weights converts (alpha folded in),
and what ComfyUI's Z-Image (Lumina2) key map accepts (`diffusion_model.` + diffusers names, to_q/k/v placed into
its fused qkv).
"""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from engine.errors import UserError
from engine.weights.files import parse_ref

ADAPTER_REPO = "https://huggingface.co/ostris/zimage_turbo_training_adapter/resolve/main"
ADAPTERS = {"v1": f"{ADAPTER_REPO}/zimage_turbo_training_adapter_v1.safetensors",
            "v2": f"{ADAPTER_REPO}/zimage_turbo_training_adapter_v2.safetensors"}
DEFAULT_ADAPTER = {"z_image": "v1", "z_image_base": "none"}  # ai-toolkit's default for Turbo is v1
TARGETS = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
           "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
MAIN, REFINERS = ("layers.",), ("noise_refiner.", "context_refiner.")
FILE_PREFIX = "diffusion_model."
PROMPT_CHUNK = 8  # captions encoded per text-encoder pass


class CachedPrompts:
    """Stands in for the prompt encoder when sampling: the features computed before the encoder was freed."""

    def __init__(self, features: dict, device):
        self.features, self.device = features, device

    def encode(self, prompts, hidden_layer: int = -2):
        return [self.features[p].to(self.device) for p in prompts]


class ZImageTrainer:
    """Loads the parts one at a time (encoder, VAE, transformer), and runs the model for the training loop."""

    def __init__(self, handler, model_def, locator, options, dtype, device):
        if model_def.architecture not in DEFAULT_ADAPTER:
            raise UserError(f"{model_def.type}: LoRA training works on Z-Image Turbo (z_image) and the base model "
                            f"(z_image_base), not on the {model_def.architecture} architecture")
        self.model_def, self.locator, self.options = model_def, locator, options
        self.dtype, self.device = dtype, torch.device(device)
        self.paths = handler.fetch(model_def, locator, options)  # downloads what is missing, with progress
        self.transformer_path = self.paths["transformer"]
        self.shift = float(model_def.defaults.get("flow_shift", 3.0))
        self.encoder = self.vae = self.transformer = self.adapter = None

    # ---- the adapter --------------------------------------------------------------------------------------

    def adapter_file(self, choice: str) -> tuple[Path | None, list[str]]:
        """The training adapter's file for `choice` (auto, none, v1, v2, or a .safetensors path), downloading
        it when missing; and notes about the choice."""
        arch = self.model_def.architecture
        name = DEFAULT_ADAPTER[arch] if choice == "auto" else choice
        notes = []
        if name == "none":
            if arch == "z_image":
                notes.append("training Turbo without the training adapter: the LoRA will also undo part of "
                             "Turbo's 8-step distillation (give --adapter v1 or v2 to avoid it)")
            return None, notes
        if arch != "z_image":
            notes.append("the training adapter is made for Turbo: on the base model it changes what is learned")
        if name in ADAPTERS:
            ref = parse_ref(ADAPTERS[name])
            return self.locator.find([ref]) or self.locator.download(ref), notes
        path = Path(name).expanduser()
        if not path.is_file() or path.suffix.lower() != ".safetensors":
            raise UserError(f"training adapter {name!r}: give v1, v2, none, or a .safetensors file that exists")
        return path.resolve(), notes

    def attach_adapter(self, path: Path) -> None:
        """The adapter at strength +1, by forward hooks (the base weights are not written)."""
        from engine.lora.apply import LoraStack
        from engine.lora.library import LoraFile
        from models.z_image.lora import linear_shapes, read_lora

        stat = Path(path).stat()
        loaded = read_lora(LoraFile(f"adapter:{Path(path).name}", Path(path), stat.st_size, stat.st_mtime_ns),
                           linear_shapes(self.transformer), self.dtype, self.device)
        self.adapter = LoraStack(self.transformer)
        self.adapter.activate([loaded])

    def adapter_strength(self, strength: float) -> None:
        if self.adapter is not None:
            self.adapter.set_strengths({a.name: strength for a in self.adapter.active})

    def detach_adapter(self) -> None:
        if self.adapter is not None:
            self.adapter.clear()
            self.adapter = None

    # ---- encoding once ----------------------------------------------------------------------------------

    def encode_prompts(self, texts: list[str], cached: bool = True) -> dict[str, torch.Tensor]:
        """{text: features [tokens, dim]} (on the CPU when cached; on the device otherwise)."""
        from models.z_image import loader
        from models.z_image.text import PromptEncoder

        if self.encoder is None:
            text_encoder = loader.load_text_encoder(self.paths["text_encoder"], self.dtype).to(self.device)
            self.encoder = PromptEncoder(text_encoder, loader.load_tokenizer(self.paths["tokenizer"]))
        if not cached:
            self.encoder.cache.clear()
        out = {}
        unique = list(dict.fromkeys(texts))
        for i in range(0, len(unique), PROMPT_CHUNK):
            chunk = unique[i:i + PROMPT_CHUNK]
            for text, feats in zip(chunk, self.encoder.encode(chunk)):
                out[text] = feats.cpu() if cached else feats
        return out

    def release_text_encoder(self) -> None:
        self.encoder = None
        _free()

    @torch.no_grad()
    def encode_images(self, images: list, size: tuple[int, int]) -> torch.Tensor:
        """PIL RGB images of `size` -> latents [B, 16, H/8, W/8] float32 on the CPU."""
        import numpy as np

        from models.z_image import loader

        if self.vae is None:
            self.vae = loader.load_vae(self.paths["vae"], self.dtype)
        self.vae.to(self.device)
        pixels = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) for im in images])
        pixels = (pixels / 127.5 - 1).to(self.device, self.vae.dtype)
        cfg = self.vae.config
        z = self.vae.encode(pixels).latent_dist.mode()
        return ((z.float() - cfg.shift_factor) * cfg.scaling_factor).cpu()

    def release_vae(self) -> None:
        """The VAE leaves the GPU (its decoder is needed again only for samples)."""
        if self.vae is not None:
            self.vae.to("cpu")
        _free()

    # ---- the transformer ----------------------------------------------------------------------------------

    def load_transformer(self, checkpointing: bool = True):
        from engine.placement.offload import set_attention
        from models.z_image import loader

        model = loader.load_transformer(self.transformer_path, self.model_def.model.get("config", {}), self.dtype)
        set_attention(model, self.options.attention, self.device)
        model.requires_grad_(False).eval().to(self.device)
        if checkpointing:
            model.enable_gradient_checkpointing()
        self.transformer = model
        return model

    def targets(self, refiners: bool = False) -> dict[str, tuple[int, int]]:
        """The Linear layers the LoRA trains: module name -> (out_features, in_features)."""
        stacks = MAIN + (REFINERS if refiners else ())
        return {name: (m.out_features, m.in_features) for name, m in self.transformer.named_modules()
                if isinstance(m, torch.nn.Linear) and name.startswith(stacks)
                and name.split(".", 2)[-1] in TARGETS}

    def predict(self, x_t: torch.Tensor, sigma: torch.Tensor, captions: list) -> torch.Tensor:
        """x_t [B, C, H, W], sigma [B] (1 = noise) -> the velocity noise - x0 [B, C, H, W] float32."""
        t = (1 - sigma).to(self.device, torch.float32)
        inputs = list(x_t.to(self.dtype).unsqueeze(2).unbind(0))
        caps = [c.to(self.device, self.dtype) for c in captions]
        out = self.transformer(inputs, t, caps, return_dict=False)[0]
        return -torch.stack([o.float() for o in out]).squeeze(2)

    # ---- samples and the file ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, settings, captions: dict) -> list:
        """Images of `settings` with the LoRA and without the adapter (the model as users will run it)."""
        from models.z_image.pipeline import ZImageModel, generate

        model = ZImageModel(self.model_def.type, self.transformer, CachedPrompts(captions, self.device), self.vae,
                            self.dtype, self.device)
        self.vae.to(self.device)
        self.adapter_strength(0.0)
        try:
            return [r.image for r in generate(model, settings)]
        finally:
            self.adapter_strength(1.0)
            self.vae.to("cpu")

    @staticmethod
    def file_tensors(lora, dtype) -> dict[str, torch.Tensor]:
        """ai-toolkit's layout: diffusion_model.<module>.lora_A.weight [r, in], .lora_B.weight [out, r], .alpha."""
        out = {}
        for name, down, up in lora.factors():
            stem = FILE_PREFIX + name
            out[f"{stem}.lora_A.weight"] = down.detach().to("cpu", dtype).contiguous()
            out[f"{stem}.lora_B.weight"] = up.detach().to("cpu", dtype).contiguous()
            out[f"{stem}.alpha"] = torch.tensor(lora.alpha, dtype=torch.float32)
        return out


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
