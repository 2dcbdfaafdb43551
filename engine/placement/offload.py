"""Placing a loaded model in memory: an mmgp memory profile on CUDA, plain `.to(device)` elsewhere.

A profile hooks every module so that weights stay in RAM and stream to the GPU within a budget
(mmgp's `offload.profile`). mmgp is imported only when a profile is applied, through `import_mmgp()`:
its import replaces `safetensors.safe_open` (and the copies transformers and accelerate hold) with a
version that rejects transformers' arguments, so those are put back. Its other import-time changes are
left in place because its hooks need them and they change nothing without a profile: transformers'
`.device` honours a `_force_device` attribute only mmgp sets, and quanto's module registry gets mmgp's
Linear/Embedding classes (this app builds its INT8 layers without that registry).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import UserError

GIB = 2**30
FIT_TOLERANCE = 0.9  # a "32 GB" machine reports about 31 GiB; a "12 GB" card about 11.7 GiB


@dataclass(frozen=True)
class Profile:
    number: int
    name: str  # mmgp's name
    ram_gb: int  # the machine it is meant for
    vram_gb: int
    summary: str


PROFILES = (
    Profile(1, "HighRAM_HighVRAM", 64, 24, "fastest: each model is loaded whole into VRAM when used; all models "
                                           "pinned in RAM for quick reloads"),
    Profile(2, "HighRAM_LowVRAM", 64, 12, "fast: all models pinned in RAM; blocks streamed to VRAM within small "
                                          "budgets, prefetched asynchronously"),
    Profile(3, "LowRAM_HighVRAM", 32, 24, "medium: the transformer pinned in RAM; models use up to 70% of VRAM"),
    Profile(4, "LowRAM_LowVRAM", 32, 12, "slow: the transformer pinned in RAM; small VRAM budgets, asynchronous "
                                         "transfers (the usual choice)"),
    Profile(5, "VerylowRAM_LowVRAM", 24, 10, "slowest: nothing pinned; the smallest VRAM budgets"),
)
PROFILE_BY_NUMBER = {p.number: p for p in PROFILES}


def profile_table() -> list[dict]:
    """The profiles as rows for the UI and the README: number, name, RAM and VRAM meant for, summary."""
    return [{"profile": p.number, "name": p.name, "ram_gb": p.ram_gb, "vram_gb": p.vram_gb, "summary": p.summary}
            for p in PROFILES]


def suggest_profile(ram_bytes: int, vram_bytes: int) -> int:
    """The fastest profile whose RAM and VRAM the machine has (5 when none fits)."""
    for p in PROFILES:
        if ram_bytes >= p.ram_gb * GIB * FIT_TOLERANCE and vram_bytes >= p.vram_gb * GIB * FIT_TOLERANCE:
            return p.number
    return PROFILES[-1].number


def machine_memory(device) -> tuple[int, int]:
    """(RAM bytes, VRAM bytes of `device`; 0 without CUDA)."""
    import psutil
    import torch

    vram = 0
    if device.type == "cuda" and torch.cuda.is_available():
        vram = torch.cuda.get_device_properties(device).total_memory
    return psutil.virtual_memory().total, vram


def resolve_profile(options, device) -> int | None:
    """The profile to apply: none off CUDA or for profile 0; the machine's suggestion when none was chosen."""
    if device.type != "cuda" or options.profile == 0:
        return None
    if options.profile is None:
        return suggest_profile(*machine_memory(device))
    return options.profile


def startup_notes(options, device) -> list[str]:
    """What the user should know once, at start-up, about memory management on this machine."""
    if device.type != "cuda":
        ignored = [flag for flag, on in (("--profile", options.profile), ("--compile", options.compile),
                                         ("--preload", options.preload_mb)) if on]
        extra = f" ({', '.join(ignored)} ignored)" if ignored else ""
        return [f"no CUDA GPU in use: memory profiles are not applied{extra}; running on the {device.type.upper()}"]
    if options.profile == 0:
        return ["--compile works with a memory profile: ignored with --profile 0"] if options.compile else []
    if options.profile is None:
        ram, vram = machine_memory(device)
        p = PROFILE_BY_NUMBER[suggest_profile(ram, vram)]
        return [f"memory profile {p.number} ({p.name}, for {p.ram_gb} GB RAM / {p.vram_gb} GB VRAM) chosen for this "
                f"machine ({ram / GIB:.0f} GiB RAM, {vram / GIB:.0f} GiB VRAM): {p.summary}. Another: --profile N"]
    return []


def profile_kwargs(profile: int, options, dtype) -> dict:
    """Arguments for mmgp's `offload.profile`: no quantization on the fly (the files chosen decide),
    VRAM budgets in MB as Wan2GP sets them, and the user's preload, compile and safety options."""
    kwargs = dict(quantizeTransformer=False, extraModelsToQuantize=None, convertWeightsFloatTo=dtype,
                  vram_safety_coefficient=float(options.vram_safety_coefficient),
                  compile="transformer" if options.compile else False)
    preload = options.preload_mb
    if profile in (2, 4, 5):
        kwargs["budgets"] = {"transformer": preload or 100, "text_encoder": preload or 100,
                             "*": max(1000 if profile == 5 else 3000, preload)}
    elif profile == 3:
        kwargs["budgets"] = {"*": "70%"}
    return kwargs


_MMGP_PATCHED = (("safetensors", "safe_open"), ("safetensors.torch", "load_file"),
                 ("accelerate.utils.modeling", "safe_open"), ("accelerate.utils.modeling", "safe_load_file"),
                 ("transformers.modeling_utils", "safe_open"), ("transformers.modeling_utils", "safe_load_file"))


def import_mmgp():
    """mmgp's `offload` module, with the safetensors readers its import replaced put back."""
    import importlib

    from mmgp import offload, safetensors2

    originals = {safetensors2.safe_open: safetensors2._old_safe_open,
                 safetensors2.torch_load_file: safetensors2._old_torch_load_file}
    for module_name, attr in _MMGP_PATCHED:
        module = importlib.import_module(module_name)
        current = getattr(module, attr, None)
        if current in originals:
            setattr(module, attr, originals[current])
    return offload


@dataclass
class Placement:
    profile: int | None  # the mmgp profile applied, or None
    handle: object = None  # mmgp's offload object (released on unload)

    def release(self) -> None:
        if self.handle is not None:
            self.handle.release()
            self.handle = None


def set_attention(transformer, attention: str, device) -> None:
    """diffusers' attention backend for the transformer: sdpa (PyTorch), flash (flash-attn), sage (SageAttention)."""
    if attention == "sdpa":
        return
    if device.type != "cuda":
        raise UserError(f"--attention {attention} needs a CUDA GPU; use sdpa")
    try:
        transformer.set_attention_backend({"flash": "flash", "sage": "sage"}[attention])
    except (RuntimeError, ImportError, ValueError) as exc:
        package = {"flash": "flash-attn", "sage": "sageattention"}[attention]
        raise UserError(f"--attention {attention} is not available ({exc}); install {package} or use sdpa") from None


def place(parts: dict, options, device, dtype) -> Placement:
    """Put the loaded components ({"transformer", "text_encoder", "vae"}) where they will run. A text encoder
    given a device of its own (options.text_encoder_device, e.g. a second GPU) goes there whole, outside the
    memory profile, which then manages the rest."""
    set_attention(parts["transformer"], options.attention, device)
    own = getattr(options, "text_encoder_device", None)
    if own is not None and "text_encoder" in parts:
        import torch

        if torch.device(own) != device:
            parts = dict(parts)
            parts.pop("text_encoder").to(own)
    profile = resolve_profile(options, device)
    if profile is None:
        for part in parts.values():
            part.to(device)
        return Placement(None)
    handle = import_mmgp().profile(dict(parts), profile_no=profile, **profile_kwargs(profile, options, dtype))
    return Placement(profile, handle)
