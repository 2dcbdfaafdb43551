"""The Z-Image family: what each architecture can do, its defaults, its files, how to load and run it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.capabilities import Capabilities
from core.errors import ModelFileError, SettingsError, UserError
from core.files import FileLocator, as_list, parse_ref
from core.settings import GenerationSettings

# Control modes offered: preprocessors (pose, canny, depth, gray), a ready map (raw: HED, MLSD, scribble,
# tile, ...), and for 2.x inpainting without a map (none).
_CONTROL_V1 = ("pose", "canny", "depth", "raw")
_CONTROL_V2 = ("pose", "canny", "depth", "gray", "raw", "none")

CAPABILITIES = {
    "z_image": Capabilities(nag=True, step_range=(1, 50)),
    "z_image_base": Capabilities(cfg=True, step_range=(1, 100)),
    "z_image_control": Capabilities(nag=True, control_modes=_CONTROL_V1, step_range=(1, 50)),
    "z_image_control2": Capabilities(nag=True, control_modes=_CONTROL_V2, inpaint=True, step_range=(1, 50)),
    "z_image_control2_1": Capabilities(nag=True, control_modes=_CONTROL_V2, inpaint=True, step_range=(1, 50)),
    "z_image_twinflow_turbo": Capabilities(nag=True, unified_sampler=True, shift=False, step_range=(1, 8),
                                           available=False),
}

DEFAULTS = {
    "z_image": dict(num_inference_steps=8, guidance_scale=0.0, flow_shift=3.0),
    "z_image_base": dict(num_inference_steps=30, guidance_scale=4.0, flow_shift=3.0),
    "z_image_control": dict(num_inference_steps=9, guidance_scale=0.0, flow_shift=3.0, control_weight=0.75),
    "z_image_control2": dict(num_inference_steps=9, guidance_scale=0.0, flow_shift=3.0, control_weight=0.75),
    "z_image_control2_1": dict(num_inference_steps=8, guidance_scale=0.0, flow_shift=3.0, control_weight=0.9),
    "z_image_twinflow_turbo": dict(num_inference_steps=2, guidance_scale=0.0, flow_shift=3.0),
}

# component -> model JSON field ("control" only where the type has "modules")
COMPONENTS = {"transformer": "URLs", "control": "modules", "text_encoder": "text_encoder_URLs",
              "vae": "vae_URLs", "tokenizer": "tokenizer"}


@dataclass
class ComponentStatus:
    component: str
    path: Path | None  # on disk (None: to download)
    source: str  # the reference it came from
    size: int | None = None


class ZImageHandler:
    family = "z_image"

    @staticmethod
    def architectures() -> list[str]:
        return list(CAPABILITIES)

    @staticmethod
    def capabilities(arch: str) -> Capabilities:
        return CAPABILITIES[arch]

    @staticmethod
    def default_settings(arch: str) -> dict:
        return dict(DEFAULTS[arch], width=1024, height=1024, sampler="euler")

    @staticmethod
    def lora_dir(args=None) -> Path:
        return Path(getattr(args, "lora_dir_z_image", None) or "loras/z_image")

    @staticmethod
    def validate(settings: GenerationSettings, arch: str) -> None:
        caps = CAPABILITIES[arch]
        if settings.guidance_scale > 0 and not caps.cfg:
            raise SettingsError(f"{arch} is distilled and runs without CFG: set guidance to 0 "
                                "(negative prompts on such models work through NAG)")
        if settings.sampler not in caps.samplers:
            raise SettingsError(f"unknown sampler {settings.sampler!r} (available: {', '.join(caps.samplers)})")
        _validate_control(settings, arch, caps)

    @staticmethod
    def notes(settings: GenerationSettings, arch: str) -> list[str]:
        """Warnings about settings that will have no effect."""
        notes = []
        if settings.negative_prompt and not CAPABILITIES[arch].cfg:
            notes.append(f"the negative prompt has no effect on {arch} in this version (it needs NAG)")
        if CAPABILITIES[arch].control_modes and not settings.control_image:
            notes.append(f"{arch} is a control model but no control image is given: generating without control")
        elif settings.control_image and settings.control_weight == 0:
            notes.append("control weight 0: the control image has no effect")
        return notes

    # ---- files -------------------------------------------------------------------------------

    def file_status(self, model_def, locator: FileLocator) -> list[ComponentStatus]:
        """Each component: where it is on disk, or what would be downloaded."""
        found: dict[str, ComponentStatus] = {}
        for comp, field_name in COMPONENTS.items():
            if comp != "control" or field_name in model_def.model:
                found[comp] = self._locate(model_def, comp, field_name, locator, found)
        return list(found.values())

    def _locate(self, model_def, comp, field_name, locator, found) -> ComponentStatus:
        refs = [parse_ref(r) for r in as_list(model_def.model.get(field_name))]
        comfy = as_list(model_def.model.get("comfyui", {}).get(field_name))
        path = locator.find(refs, comfy)
        if path is not None and comp == "transformer" and (path / "model_index.json").is_file():
            path = path / "transformer"  # a whole diffusers repo: its parts sit in subfolders
        if path is None:
            path = self._from_neighbours(comp, found)
        if path is None and not refs:
            raise UserError(f"model type {model_def.type}: no file given for its {comp} ({field_name})")
        sizes = model_def.model.get("file_sizes", {})
        ref = refs[0] if refs else None
        source = str(path) if path else ref.text
        return ComponentStatus(comp, path, source, None if path else sizes.get(ref.filename))

    @staticmethod
    def _from_neighbours(comp, found) -> Path | None:
        """A diffusers repo's sibling folder, an all-in-one file, or the tokenizer beside the encoder."""
        tr = found.get("transformer")
        if tr and tr.path is not None:
            sibling = tr.path.parent / comp
            if tr.path.name == "transformer" and sibling.is_dir():
                return sibling
            if tr.path.is_file() and comp in ("text_encoder", "vae"):
                from models.z_image.keys import components_in
                from models.z_image.loader import open_weights

                try:
                    if comp in components_in(open_weights(tr.path).tensors):
                        return tr.path
                except ModelFileError:
                    return None  # a broken transformer file is reported when it is loaded
        te = found.get("text_encoder")
        if comp == "tokenizer" and te and te.path is not None:
            folder = te.path if te.path.is_dir() else te.path.parent
            if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
                return folder
        return None

    def fetch(self, model_def, locator: FileLocator) -> dict[str, Path]:
        """Every component's path, downloading what is missing."""
        from models.z_image.loader import TOKENIZER_FILES

        paths = {}
        for status in self.file_status(model_def, locator):
            if status.path is None:
                ref = parse_ref(status.source)
                status.path = locator.download(ref, status.size, TOKENIZER_FILES if ref.folder else ())
            paths[status.component] = status.path
        return paths

    # ---- load and run -------------------------------------------------------------------------

    def load(self, model_def, locator: FileLocator, dtype, device):
        from models.z_image import loader
        from models.z_image.pipeline import ZImageModel
        from models.z_image.text import PromptEncoder

        if not CAPABILITIES[model_def.architecture].available:
            raise UserError(f"{model_def.type}: generation for the {model_def.architecture} architecture is not "
                            "available in this version yet (its files and settings are defined)")
        if CAPABILITIES[model_def.architecture].control_modes and "modules" not in model_def.model:
            raise UserError(f"{model_def.type} is a control model type but names no control module: add "
                            "\"modules\" (the Fun-ControlNet-Union file) to its model JSON")
        paths = self.fetch(model_def, locator)
        transformer = loader.load_transformer(paths["transformer"], model_def.model.get("config", {}), dtype)
        text_encoder = loader.load_text_encoder(paths["text_encoder"], dtype)
        tokenizer = loader.load_tokenizer(paths["tokenizer"])
        vae = loader.load_vae(paths["vae"], dtype)
        _check_fit(paths, transformer, text_encoder, vae)
        encoder = PromptEncoder(text_encoder.to(device), tokenizer)
        model = ZImageModel(model_def.type, transformer.to(device), encoder, vae.to(device), dtype, device,
                            {k: str(v) for k, v in paths.items()})
        if "control" in paths:
            model.control = _load_control(paths["control"], model, locator, dtype)
        return model

    @staticmethod
    def generate(model, settings: GenerationSettings, callback=None):
        from models.z_image.pipeline import generate

        return generate(model, settings, callback)

    @staticmethod
    def control_map(settings: GenerationSettings, locator: FileLocator, device):
        """The control map the model will see (PIL RGB at the output size), to show before generating."""
        from models.z_image.control import output_size, pictures

        return pictures(output_size(settings), locator, device).control_map


def _validate_control(settings: GenerationSettings, arch: str, caps: Capabilities) -> None:
    """Control settings against what the architecture can do; the named pictures must be usable images."""
    if not settings.control_image:
        return
    if not caps.control_modes:
        raise SettingsError(f"{arch} takes no control image: pick a control model type (z_image_control, "
                            "z_image_control2, z_image_control2_1)")
    if settings.control_mode not in caps.control_modes:
        raise SettingsError(f"control mode {settings.control_mode!r} is not available on {arch} "
                            f"(available: {', '.join(caps.control_modes)})")
    if settings.mask and not caps.inpaint:
        raise SettingsError(f"{arch} cannot inpaint: masks need Fun-ControlNet-Union 2.x (z_image_control2, "
                            "z_image_control2_1)")
    from core.images import load_mask, open_user_image

    open_user_image(settings.control_image, "control image")
    if settings.mask:
        load_mask(settings.mask)


def _load_control(path, model, locator, dtype):
    from models.z_image.control import ControlModule
    from models.z_image.control_loader import load_control

    net, spec = load_control(path, model.transformer, dtype)
    return ControlModule.attach(net.to(model.device), spec, locator, model.transformer)


def _check_fit(paths, transformer, text_encoder, vae) -> None:
    """The three parts must agree on caption width and latent channels."""
    cap = transformer.config.cap_feat_dim
    if text_encoder.config.hidden_size != cap:
        raise ModelFileError(paths["text_encoder"], f"text encoder width {text_encoder.config.hidden_size} does "
                                                    f"not match the transformer's caption width {cap}")
    if vae.config.latent_channels != transformer.config.in_channels:
        raise ModelFileError(paths["vae"], f"VAE has {vae.config.latent_channels} latent channels, the "
                                           f"transformer expects {transformer.config.in_channels}")


HANDLER = ZImageHandler()
