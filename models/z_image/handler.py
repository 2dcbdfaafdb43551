"""The Z-Image family: what each architecture can do, its defaults, its files, how to load and run it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.weights import formats
from engine.weights import quantization as Q
from engine.capabilities import Capabilities
from engine import jobs
from engine.errors import DownloadError, ModelFileError, SettingsError, UserError
from engine.weights.files import FileLocator, missing_line, parse_ref
from engine.load_options import LoadOptions
from engine.settings import GenerationSettings
from models.z_image import keys as K
from models.z_image.config import COMPONENT_FIELDS, VAE_SCALE

# Control modes offered: preprocessors (pose, canny, depth, gray), a ready map (raw: HED, MLSD, scribble,
# tile, ...), and for 2.x inpainting without a map (none).
_CONTROL_V1 = ("pose", "canny", "depth", "raw")
_CONTROL_V2 = ("pose", "canny", "depth", "gray", "raw", "none")

_FLOW = dict(samplers=("euler", "euler_ancestral", "heun", "ralston", "dpmpp_2m"),
             schedulers=("simple", "beta", "sgm_uniform"))

CAPABILITIES = {
    "z_image": Capabilities(nag=True, step_range=(1, 50), **_FLOW),
    "z_image_base": Capabilities(cfg=True, step_range=(1, 100), **_FLOW),
    "z_image_control": Capabilities(nag=True, control_modes=_CONTROL_V1, step_range=(1, 50), **_FLOW),
    "z_image_control2": Capabilities(nag=True, control_modes=_CONTROL_V2, inpaint=True, step_range=(1, 50), **_FLOW),
    "z_image_control2_1": Capabilities(nag=True, control_modes=_CONTROL_V2, inpaint=True, step_range=(1, 50), **_FLOW),
    "z_image_twinflow_turbo": Capabilities(nag=True, unified_sampler=True, shift=False, step_range=(1, 8),
                                           samplers=("twinflow",), schedulers=()),
}

# NAG for the distilled types (the shipped model JSONs repeat these, for finetunes that name only files):
# ComfyUI-NAG's advice (tau 2.5, alpha 0.25, stop before the last steps) with a middle scale.
_NAG = dict(nag_scale=3.0, nag_tau=2.5, nag_alpha=0.25, nag_start=0.0, nag_end=0.75)

DEFAULTS = {
    "z_image": dict(num_inference_steps=8, guidance_scale=0.0, flow_shift=3.0, **_NAG),
    "z_image_base": dict(num_inference_steps=30, guidance_scale=4.0, flow_shift=3.0),
    "z_image_control": dict(num_inference_steps=9, guidance_scale=0.0, flow_shift=3.0, control_weight=0.75, **_NAG),
    "z_image_control2": dict(num_inference_steps=9, guidance_scale=0.0, flow_shift=3.0, control_weight=0.75, **_NAG),
    "z_image_control2_1": dict(num_inference_steps=8, guidance_scale=0.0, flow_shift=3.0, control_weight=0.9, **_NAG),
    "z_image_twinflow_turbo": dict(num_inference_steps=2, guidance_scale=0.0, flow_shift=3.0, **_NAG),
}

QUANTIZABLE = ("transformer", "control", "text_encoder")  # components with bf16 / INT8 / fp8 / GGUF ... alternatives


@dataclass
class ComponentStatus:
    component: str
    path: Path | None  # on disk (None: to download)
    source: str  # the reference it came from
    size: int | None = None
    kind: str = ""  # engine.weights.formats.KINDS, for the components that have alternatives
    detail: str = ""  # the file's format in a few words ("gguf Q4_K_M", "fp8 scaled e4m3fn"), when on disk


@dataclass
class QuantizedFile:
    component: str
    field: str  # the model JSON field listing the component's files
    path: Path
    written: bool  # False: the file was already there and is kept
    source: Path | None = None  # the bf16 file or folder it was made from


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
        return dict(DEFAULTS[arch], width=1024, height=1024, sampler=CAPABILITIES[arch].samplers[0])

    @staticmethod
    def adopt_wan2gp(model: dict, settings: dict, where: str) -> tuple[dict, dict, list[str]]:
        """A model JSON in Wan2GP's Z-Image conventions, in this app's terms (models/z_image/wan2gp.py)."""
        from models.z_image.wan2gp import adopt

        return adopt(model, settings, where)

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
            raise SettingsError(f"sampler {settings.sampler!r} is not available for {arch} "
                                f"(available: {', '.join(caps.samplers)})")
        known = caps.schedulers or _FLOW["schedulers"]  # a sampler with its own schedule ignores the name
        if settings.scheduler not in known:
            raise SettingsError(f"unknown scheduler {settings.scheduler!r} (available: {', '.join(known)})")
        _validate_control(settings, arch, caps)
        _validate_images(settings)

    @staticmethod
    def notes(settings: GenerationSettings, arch: str) -> list[str]:
        """Warnings about settings that will have no effect."""
        caps, notes = CAPABILITIES[arch], []
        negative = bool(settings.negative_prompt.strip())
        if negative and not caps.cfg and not settings.nag_on:
            notes.append(f"the negative prompt has no effect on {arch} while NAG is off: set a NAG scale above 1")
        if negative and settings.nag_scale > 1 and settings.cfg_on:
            notes.append("NAG is off while CFG is on (guidance above 0): the negative prompt goes through CFG")
        if not caps.schedulers and (settings.scheduler != "simple" or settings.sigma_rescale != 1):
            notes.append(f"the {settings.sampler} sampler uses its own schedule: scheduler and sigma rescale "
                         "are ignored")
        if caps.control_modes and not settings.control_image:
            notes.append(f"{arch} is a control model but no control image is given: generating without control")
        elif settings.control_image and settings.control_weight == 0:
            notes.append("control weight 0: the control image has no effect")
        return notes + _image_notes(settings)

    # ---- files -------------------------------------------------------------------------------

    def file_status(self, model_def, locator: FileLocator, options: LoadOptions | None = None) \
            -> list[ComponentStatus]:
        """Each component: where it is on disk, or what would be downloaded (the file kind `options` ask)."""
        options = options or LoadOptions()
        found: dict[str, ComponentStatus] = {}
        for comp, field_name in COMPONENT_FIELDS.items():
            if comp != "control" or field_name in model_def.model:
                found[comp] = self._locate(model_def, comp, field_name, locator, found, options.quantization(comp))
        return list(found.values())

    def _locate(self, model_def, comp, field_name, locator, found, want="auto") -> ComponentStatus:
        refs = [parse_ref(r) for r in model_def.files(field_name)]
        comfy = model_def.comfyui_files(field_name)
        if comp in QUANTIZABLE and want != "auto":
            refs, comfy = self._of_kind(model_def, comp, field_name, refs, comfy, locator, want)
        path = locator.find(refs, comfy)
        if path is not None and comp == "transformer" and (path / "model_index.json").is_file():
            path = path / "transformer"  # a whole diffusers repo: its parts sit in subfolders
        if path is None:
            path = self._from_neighbours(comp, found)
        if path is None and not refs:
            raise UserError(f"model type {model_def.type}: no file given for its {comp} ({field_name})")
        sizes = model_def.file_sizes
        ref = refs[0] if refs else None
        source = str(path) if path else ref.text
        kind = formats.kind_of(path.name if path else ref.filename, path) if comp in QUANTIZABLE else ""
        detail = formats.describe(path) if kind and path is not None and path.is_file() else kind
        return ComponentStatus(comp, path, source, None if path else sizes.get(ref.filename), kind, detail)

    @staticmethod
    def _of_kind(model_def, comp, field_name, refs, comfy, locator, want):
        """The alternatives of the wanted kind; a clear error when the model JSON lists none."""
        refs = [r for r in refs if formats.kind_of(r.filename, locator.local_path(r)) == want]
        comfy = [c for c in comfy if formats.kind_of(c, locator.comfyui_path([c])) == want]
        if not refs and not comfy:
            hint = (f"make one with `python app.py quantize --model {model_def.type}`" if want == "int8"
                    else f"add a {want} file to the model JSON's \"{field_name}\" list (or put it in a ComfyUI "
                         "folder the JSON's \"comfyui\" patterns name)")
            raise UserError(f"model type {model_def.type} lists no {want.upper()} file for its {comp}: {hint}, or "
                            f"choose --{comp.replace('_', '-')}-quantization auto")
        return refs, comfy

    def quantization_choices(self, model_def, locator: FileLocator) -> dict[str, list[str]]:
        """For the UI: the file kinds (engine.weights.formats.KINDS) each quantizable component offers, in
        listed order."""
        choices = {}
        for comp in QUANTIZABLE:
            field_name = COMPONENT_FIELDS[comp]
            refs = [parse_ref(r) for r in model_def.files(field_name)]
            comfy = model_def.comfyui_files(field_name)
            kinds = [formats.kind_of(r.filename, locator.local_path(r)) for r in refs]
            kinds += [formats.kind_of(c, locator.comfyui_path([c])) for c in comfy]
            if kinds:
                choices[comp] = list(dict.fromkeys(kinds))
        return choices

    @staticmethod
    def _from_neighbours(comp, found) -> Path | None:
        """A diffusers repo's sibling folder, an all-in-one file, or the tokenizer beside the encoder."""
        tr = found.get("transformer")
        if tr and tr.path is not None:
            sibling = tr.path.parent / comp
            if tr.path.name == "transformer" and sibling.is_dir():
                return sibling
            if tr.path.is_file() and comp in ("text_encoder", "vae"):
                from engine.weights.safetensors_io import open_weights

                try:
                    if comp in K.components_in(open_weights(tr.path).tensors):
                        return tr.path
                except ModelFileError:
                    return None  # a broken transformer file is reported when it is loaded
        te = found.get("text_encoder")
        if comp == "tokenizer" and te and te.path is not None:
            folder = te.path if te.path.is_dir() else te.path.parent
            if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
                return folder
        return None

    def fetch(self, model_def, locator: FileLocator, options: LoadOptions | None = None,
              components=None) -> dict[str, Path]:
        """Every component's path (or those in `components`), downloading what is missing: "downloading file k
        of n" with its bytes and the total reported to the running job (engine.jobs), where Stop cancels it.
        Offline, or when a download fails, the message names every file still missing and where it goes."""
        from models.z_image.loader import TOKENIZER_FILES

        statuses = [s for s in self.file_status(model_def, locator, options)
                    if components is None or s.component in components]
        missing = [s for s in statuses if s.path is None]
        refs = {s.component: parse_ref(s.source) for s in missing}
        total = sum(s.size or 0 for s in missing)
        if missing and locator.is_offline():
            raise DownloadError(missing_files_message(missing, refs, locator, "offline mode (HF_HUB_OFFLINE=1)"))
        done_before = 0
        for k, status in enumerate(missing, 1):
            ref = refs[status.component]
            what = f"downloading file {k} of {len(missing)}: {ref.filename}"

            def report(done, size, what=what, before=done_before, expected=status.size or 0):
                size = size or expected  # the hub's size once it answers, else the model JSON's
                jobs.progress(done, size, what, (before + done, max(total - expected + size, before + done)))

            report(0, status.size)
            try:
                status.path = locator.download(ref, status.size, TOKENIZER_FILES if ref.folder else (), report)
            except DownloadError as exc:
                if len(missing) - k == 0:
                    raise
                raise DownloadError(f"{exc} Still missing as well: "
                                    + "; ".join(missing_line(refs[s.component], s.size, locator.target(
                                        refs[s.component])) for s in missing[k:])) from None
            done_before += _size(status.path) or status.size or 0
            total = max(total, done_before)
        return {s.component: s.path for s in statuses}

    # ---- load and run -------------------------------------------------------------------------

    def load(self, model_def, locator: FileLocator, dtype, device, options: LoadOptions | None = None):
        """Load the files `options` choose (bf16, INT8, fp8, GGUF, Nunchaku), then place them: a memory profile on
        CUDA, else `.to(device)`. float16 gets the overflow guards (models/z_image/fp16.py)."""
        import torch

        from engine.placement import offload
        from models.z_image import loader
        from models.z_image.pipeline import ZImageModel
        from models.z_image.text import PromptEncoder

        options = _attention_for_gpu(model_def, options or LoadOptions(), device)
        if not CAPABILITIES[model_def.architecture].available:
            raise UserError(f"{model_def.type}: generation for the {model_def.architecture} architecture is not "
                            "available in this version yet (its files and settings are defined)")
        if CAPABILITIES[model_def.architecture].control_modes and "modules" not in model_def.model:
            raise UserError(f"{model_def.type} is a control model type but names no control module: add "
                            "\"modules\" (the Fun-ControlNet-Union file) to its model JSON")
        paths = self.fetch(model_def, locator, options)
        jobs.stage("loading the model")
        transformer = loader.load_transformer(paths["transformer"], model_def.config, dtype, device)
        if CAPABILITIES[model_def.architecture].unified_sampler and not hasattr(transformer, "t_embedder_2"):
            raise ModelFileError(paths["transformer"], "this is not a TwinFlow transformer: it has no second time "
                                 "embedder (t_embedder_2.*), which TwinFlow's sampler needs. Wan2GP's int8 TwinFlow "
                                 "file lacks it; use the bf16 file")
        text_encoder = loader.load_text_encoder(paths["text_encoder"], dtype)
        tokenizer = loader.load_tokenizer(paths["tokenizer"])
        vae = loader.load_vae(paths["vae"], dtype)
        _check_fit(paths, transformer, text_encoder, vae)
        if dtype == torch.float16:  # GPUs without bf16: keep activations inside fp16's range
            from models.z_image.fp16 import install_fp16_guards

            install_fp16_guards(transformer)
        if getattr(transformer, "is_nunchaku", False):
            options = options.replace(profile=0)  # nunchaku placed it on the GPU; it has no offloading
        placement = offload.place({"transformer": transformer, "text_encoder": text_encoder, "vae": vae},
                                  options, device, dtype)
        load_info = {c: formats.kind_of(p.name, p) for c, p in paths.items() if c in QUANTIZABLE}
        load_info.update(profile=placement.profile, attention=options.attention)
        if options.text_encoder_device:
            load_info["text_encoder_device"] = options.text_encoder_device
        model = ZImageModel(model_def.type, transformer, PromptEncoder(text_encoder, tokenizer), vae, dtype, device,
                            {k: str(v) for k, v in paths.items()}, placement=placement, load_info=load_info)
        if "control" in paths:
            model.control = _load_control(paths["control"], model, locator, dtype)
        return model

    def load_encoder(self, model_def, locator: FileLocator, dtype, device, options: LoadOptions | None = None):
        """Only the text encoder and tokenizer (what the prompt enhancer needs), downloading only those: an
        object with `.encoder` (models.z_image.text.PromptEncoder) and `.placement`."""
        from types import SimpleNamespace

        from engine.placement.offload import Placement
        from models.z_image import loader
        from models.z_image.text import PromptEncoder

        options = options or LoadOptions()
        paths = self.fetch(model_def, locator, options, components=("text_encoder", "tokenizer"))
        jobs.stage("loading the text encoder")
        text_encoder = loader.load_text_encoder(paths["text_encoder"], dtype)
        text_encoder.to(options.text_encoder_device or device)
        encoder = PromptEncoder(text_encoder, loader.load_tokenizer(paths["tokenizer"]))
        return SimpleNamespace(model_type=model_def.type, encoder=encoder, placement=Placement(None),
                               files={k: str(v) for k, v in paths.items()})

    def quantize(self, model_def, locator: FileLocator, components, folder: Path) -> list[QuantizedFile]:
        """Write INT8 (quanto, Wan2GP's layout) copies of the components' bf16 files into `folder`
        (downloading a missing bf16 file); a file already there is kept, not overwritten."""
        import torch

        from engine.weights.safetensors_io import open_weights
        from models.z_image import loader
        from engine.weights.assign import state_dict_for_file

        unknown = sorted(set(components) - {"transformer", "text_encoder"})
        if unknown:
            raise UserError(f"cannot quantize the {', '.join(unknown)}: only the transformer and the text encoder")
        bf16 = LoadOptions(**{f"{comp}_quantization": "bf16" for comp in components})
        statuses = {s.component: s for s in self.file_status(model_def, locator, bf16)}
        done = []
        for comp in components:
            status = statuses[comp]
            source = status.path or locator.download(parse_ref(status.source), status.size)
            single = source.is_file() and K.components_in(open_weights(source).tensors) == [comp]
            target = Path(folder) / Q.int8_file_name(source.name if single else f"{model_def.type}_{comp}")
            if target.exists():
                done.append(QuantizedFile(comp, COMPONENT_FIELDS[comp], target, False, source))
                continue
            if comp == "transformer":
                model = loader.load_transformer(source, model_def.config, torch.bfloat16)
                config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
            else:
                model = loader.load_text_encoder(source, torch.bfloat16)
                config = {**model.config.to_dict(), "architectures": [type(model).__name__]}
            modules = Q.block_linears(model)
            tensors = Q.quantized_state_dict(state_dict_for_file(model), modules)
            Path(folder).mkdir(parents=True, exist_ok=True)
            Q.save_atomically(tensors, target, Q.int8_metadata(modules, config))
            done.append(QuantizedFile(comp, COMPONENT_FIELDS[comp], target, True, source))
            del model, tensors
        return done

    @staticmethod
    def write_test_models(folder: Path) -> list[tuple[Path, str]]:
        """Tiny random-weight models of this family (they draw noise) with their model JSONs, for trying the
        app offline: [(model JSON, what it is)]."""
        from models.z_image.tiny import write_control_test_model, write_test_model

        return [(write_test_model(Path(folder)), "a tiny random-weight test model (it draws noise, not pictures)"),
                (write_control_test_model(Path(folder)), "a tiny control model (Fun-ControlNet-Union 2.1, inpaint)")]

    @staticmethod
    def preview(model, latents):
        """A cheap RGB picture of in-progress latents [B, C, h, w]."""
        from models.z_image.preview import fit_projection, latents_to_image

        if getattr(model, "preview_projection", None) is None:
            model.preview_projection = fit_projection(model.vae)
        return latents_to_image(latents, model.preview_projection)

    @staticmethod
    def enhance(model, prompt: str, seed: int, thinking: bool = False, on_token=None) -> str:
        """The prompt rewritten by the loaded text encoder (see models/z_image/enhancer.py)."""
        from models.z_image.enhancer import enhance

        return enhance(model.encoder, prompt, seed, thinking, on_token=on_token)

    @staticmethod
    def lora_notes(settings: GenerationSettings, arch: str) -> list[str]:
        """A reminder when several LoRAs are stacked on a distilled model (a known trait of Turbo), and when a
        positive-only LoRA has no CFG pass to split (it then acts on every pass)."""
        notes = []
        if len([x for x in settings.loras if x["strength"]]) > 1 and not CAPABILITIES[arch].cfg:
            notes.append("stacking several LoRAs on a distilled (Turbo) model often degrades images: "
                         "lower their strengths if it does")
        positive_only = [x["name"] for x in settings.loras if x.get("positive_only")]
        if positive_only and not settings.cfg_on:
            notes.append(f"LoRA {', '.join(positive_only)} is set to CFG's positive branch only, but CFG is off: "
                         "it acts on every pass (these LoRAs are meant for Z-Image base with CFG)")
        return notes

    @staticmethod
    def apply_loras(model, files) -> list[str]:
        """Attach exactly these LoRA files (engine.lora.library.LoraFile) to a loaded model; returns warnings."""
        from models.z_image.lora import apply_loras

        if files and getattr(model.transformer, "is_nunchaku", False):
            raise UserError("LoRAs cannot be applied to a Nunchaku SVDQ transformer here: use the bf16, INT8, fp8 "
                            "or GGUF file for LoRAs")
        return apply_loras(model, files)

    @staticmethod
    def describe_lora(path) -> str:
        """One line about a LoRA file, from its header only (for listings)."""
        from models.z_image.lora import describe_file

        return describe_file(path)

    @staticmethod
    def trainable(arch: str) -> bool:
        """LoRA training works on Turbo (with the training adapter) and the base model."""
        from models.z_image.training import DEFAULT_ADAPTER

        return arch in DEFAULT_ADAPTER

    def training_backend(self, model_def, locator: FileLocator, options: LoadOptions, dtype, device):
        """This family's side of a LoRA training run (engine/training/run.py; models/z_image/training.py)."""
        from models.z_image.training import ZImageTrainer

        return ZImageTrainer(self, model_def, locator, options, dtype, device)

    @staticmethod
    def generate(model, settings: GenerationSettings, callback=None, upscalers=None):
        """Images for `settings`; `upscalers` (engine.images.upscalers.Upscalers) serves upscaler model names."""
        from models.z_image.pipeline import generate

        if getattr(model.transformer, "is_nunchaku", False) and (settings.nag_on or settings.control_image):
            raise SettingsError("NAG and control need the transformer's separate q/k/v layers, which a Nunchaku SVDQ "
                                "transformer fuses: set the NAG scale to 1 (or clear the negative prompt) and no "
                                "control image, or use the bf16, INT8, fp8 or GGUF file")
        return generate(model, settings, callback, upscalers)

    # ---- image to LoRA (Z-Image-i2L: models/z_image/i2l) ----------------------------------------

    @staticmethod
    def image_to_lora_files(locator: FileLocator, given: dict | None = None) -> list[str]:
        """One line per image-to-LoRA file: where it is, or its download size."""
        from models.z_image.i2l.files import status

        return [s.line() for s in status(locator, given)]

    @staticmethod
    def prepare_image_to_lora(images, name: str, folder, locator: FileLocator, **options):
        """A checked request (models/z_image/i2l/run.py: pictures, name, files, memory mode)."""
        from models.z_image.i2l.run import prepare

        return prepare(images, name, folder, locator, **options)

    @staticmethod
    def image_to_lora(request, locator: FileLocator, device, report=None):
        """Make the LoRA file (returns models.z_image.i2l.run.I2LResult)."""
        from models.z_image.i2l.run import make_lora

        return make_lora(request, locator, device, report)

    @staticmethod
    def control_map(settings: GenerationSettings, locator: FileLocator, device):
        """The control map the model will see (PIL RGB at the output size), to show before generating."""
        from models.z_image.control import output_size, pictures

        return pictures(output_size(settings), locator, device).control_map


def _attention_for_gpu(model_def, options: LoadOptions, device) -> LoadOptions:
    """A model JSON's `attention` map (Wan2GP's {"<89": "sdpa"}: the kernel for GPUs of that generation) decides
    the attention kernel on a matching CUDA GPU."""
    from engine.load_options import ATTENTION_CHOICES
    from engine.wan2gp import attention_for

    if getattr(device, "type", None) != "cuda" or not model_def.model.get("attention"):
        return options
    import torch

    kernel = attention_for(model_def.model["attention"], tuple(torch.cuda.get_device_capability(device)))
    kernel = {"sage2": "sage", "sage3": "sage", "flash2": "flash"}.get(kernel, kernel)
    return options.replace(attention=kernel) if kernel in ATTENTION_CHOICES and kernel != options.attention \
        else options


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
    from engine.images.io import load_mask, open_user_image

    open_user_image(settings.control_image, "control image")
    if settings.mask:
        load_mask(settings.mask)


def _validate_images(settings: GenerationSettings) -> None:
    """The init image (and its mask) must be usable pictures, checked before anything loads."""
    if not settings.init_image:
        return
    from engine.images.io import load_mask, open_user_image

    open_user_image(settings.init_image, "init image")
    if settings.mask:
        load_mask(settings.mask)


def _image_notes(settings: GenerationSettings) -> list[str]:
    """What the image settings will (not) do."""
    notes = []
    if settings.init_image:
        if settings.strength == 0:
            notes.append("strength 0: the init image is returned as it is" +
                         (" (upscaled), no model pass" if settings.upscale > 1 else ", no model pass"))
        elif settings.strength == 1 and not settings.mask:
            notes.append("strength 1 without a mask: the init image's content is not used (text-to-image at "
                         "its size)")
        if any(settings.outpaint) and settings.strength < 1:
            notes.append("outpaint margins start from stretched edge pixels: strength 1 paints them from scratch")
    elif settings.upscale > 1 and settings.hires_strength == 0:
        notes.append("hires strength 0: the base image is only upscaled")
    return notes


def _load_control(path, model, locator, dtype):
    import torch

    from models.z_image.control import ControlModule
    from models.z_image.control_loader import load_control

    net, spec = load_control(path, model.transformer, dtype)
    if dtype == torch.float16:
        from models.z_image.fp16 import install_fp16_guards

        install_fp16_guards(net)
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
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if scale != VAE_SCALE:
        raise ModelFileError(paths["vae"], f"VAE scales images down {scale}x; Z-Image needs a {VAE_SCALE}x "
                                           "(Flux-style) VAE")


def _size(path) -> int | None:
    try:
        return path.stat().st_size if path is not None and path.is_file() else None
    except OSError:
        return None


def missing_files_message(missing, refs, locator: FileLocator, why: str) -> str:
    """One message naming every missing file: what, its size, where it comes from and where it goes."""
    lines = "; ".join(f"{s.component}: {missing_line(refs[s.component], s.size, locator.target(refs[s.component]))}"
                      for s in missing)
    total = sum(s.size or 0 for s in missing)
    from engine.weights.files import human_size

    return (f"{len(missing)} file(s) missing ({human_size(total)} in all) and not downloadable now ({why}): {lines}. "
            "Download them to those places, or point the model JSON or --comfyui-models at your copies.")


HANDLER = ZImageHandler()
