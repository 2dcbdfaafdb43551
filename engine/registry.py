"""Model types (defaults/*.json + finetunes/*.json) and the family handlers that run them."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from engine import wan2gp
from engine.errors import ModelDefinitionError, SettingsError
from engine.settings import GenerationSettings, parse_resolution
from engine.weights.files import as_list

log = logging.getLogger("zimage.registry")

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("URLs", "modules", "text_encoder_URLs", "vae_URLs", "tokenizer")
MODEL_FIELDS = {"name", "architecture", "description", "config", "comfyui", "file_sizes", "attention", *COMPONENTS}


@dataclass
class ModelDef:
    """One model type: the "model" block (files, architecture) and default settings."""

    type: str
    model: dict
    defaults: dict = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # notes on fields with no meaning here (Wan2GP's), shown once

    @property
    def architecture(self) -> str:
        return self.model["architecture"]

    @property
    def name(self) -> str:
        return self.model.get("name", self.type)

    @property
    def description(self) -> str:
        return self.model.get("description", "")

    @property
    def config(self) -> dict:
        """Model config fields that override what is inferred from the weights."""
        return self.model.get("config", {})

    @property
    def file_sizes(self) -> dict:
        return self.model.get("file_sizes", {})

    def files(self, field: str) -> list:
        """The file references a component field lists (JSON keys are Wan2GP's: "URLs" lists the
        transformer's files, "modules" a control module's), alternatives in order."""
        return as_list(self.model.get(field))

    def comfyui_files(self, field: str) -> list:
        """Names of the component inside a ComfyUI models/ folder."""
        return as_list(self.model.get("comfyui", {}).get(field))


class Registry:
    """Loads model types once; finetunes override defaults field by field.

    `families` are the model-family handlers (found by `models.families()`); the engine never imports a
    family itself. Each handler names the architectures it runs."""

    def __init__(self, families, folders=(ROOT / "defaults", ROOT / "finetunes"), extra_files=()):
        self.folders = [Path(f) for f in folders]
        self.user_folder = self.folders[-1] if self.folders else ROOT / "finetunes"  # where overrides are written
        self.handlers = {arch: h for h in families for arch in h.architectures()}
        raw: dict[str, dict] = {}
        sources: dict[str, list[str]] = {}
        for folder in folders:
            for path in sorted(Path(folder).glob("*.json")):
                self._add(raw, sources, path.stem, path)
        for path in extra_files:
            self._add(raw, sources, Path(path).stem, Path(path))
        self.types = {name: self._build(name, data, sources[name]) for name, data in raw.items()}
        for model_def in self.types.values():
            for comp in COMPONENTS:
                self._resolve_reference(model_def, comp, [model_def.type])
        for model_def in self.types.values():
            self._check_defaults(model_def)
            for note in model_def.ignored:
                log.warning(note)

    def _add(self, raw, sources, name, path):
        data = read_model_json(path)
        raw[name] = deep_merge(raw.get(name, {}), data)
        sources.setdefault(name, []).append(str(path))

    def _build(self, name: str, data: dict, sources: list[str]) -> ModelDef:
        """One model type from its merged JSON, in this app's or Wan2GP's conventions (engine.wan2gp): fields with
        no meaning here are kept aside as notes; only a JSON that cannot be read as a model type is refused."""
        where = sources[-1]
        model = data.get("model")
        if not isinstance(model, dict):
            raise ModelDefinitionError(f"{where}: a model JSON needs a \"model\" block")
        model = wan2gp.rename(model, wan2gp.MODEL_NAMES)
        defaults = wan2gp.rename({k: v for k, v in data.items() if k != "model"}, wan2gp.SETTING_NAMES)
        handler = self._handler_for(model.get("architecture"), where)
        notes = []
        if hasattr(handler, "adopt_wan2gp"):  # the family's Wan2GP conventions (may pick another architecture)
            model, defaults, notes = handler.adopt_wan2gp(model, defaults, where)
            self._handler_for(model.get("architecture"), where)
        allowed = GenerationSettings.field_names() - {"model_type"}
        notes += [n for n in (wan2gp.ignored_note(set(model) - MODEL_FIELDS, MODEL_FIELDS, f"{where}: \"model\""),
                              wan2gp.ignored_note(set(defaults) - allowed, allowed, f"{where}: settings")) if n]
        model = {k: v for k, v in model.items() if k in MODEL_FIELDS}
        defaults = {k: v for k, v in defaults.items() if k in allowed}
        if "resolution" in defaults:
            try:
                defaults["width"], defaults["height"] = parse_resolution(defaults.pop("resolution"))
            except SettingsError as exc:
                raise ModelDefinitionError(f"{where}: {exc}") from None
        for key in ("config", "comfyui", "file_sizes"):
            if key in model and not isinstance(model[key], dict):
                raise ModelDefinitionError(f"{where}: \"{key}\" must be an object")
        for comp in COMPONENTS:
            value = model.get(comp)
            if value is not None and not (isinstance(value, str) or isinstance(value, list)
                                          and all(isinstance(v, str) for v in value)):
                raise ModelDefinitionError(f"{where}: \"{comp}\" must be a file, a list of alternative files or "
                                           f"a model type name, not {json.dumps(value)[:80]}")
        if "attention" in model:
            wan2gp.check_attention(model["attention"], where)
        return ModelDef(name, model, defaults, sources, notes)

    def _handler_for(self, arch, where: str):
        if arch not in self.handlers:
            raise ModelDefinitionError(f"{where}: architecture {arch!r} is not one this app knows "
                                       f"({', '.join(sorted(self.handlers))})")
        return self.handlers[arch]

    def _check_defaults(self, model_def: ModelDef) -> None:
        """A JSON's default settings must be usable values (a broken one is refused naming its file)."""
        try:
            dataclasses.replace(self.default_settings(model_def.type), prompt="-").validate()
        except SettingsError as exc:
            raise ModelDefinitionError(f"{model_def.sources[-1]}: {exc}") from None
        except TypeError as exc:
            raise ModelDefinitionError(f"{model_def.sources[-1]}: {exc}") from None

    def _resolve_reference(self, model_def: ModelDef, comp: str, chain: list[str]):
        """A component given as another model type's name reuses that type's files."""
        value = model_def.model.get(comp)
        if not (isinstance(value, str) and value in self.types):
            return
        if value in chain:
            raise ModelDefinitionError(f"model types refer to each other in a loop: {' -> '.join(chain + [value])}")
        target = self.types[value]
        self._resolve_reference(target, comp, chain + [value])
        model_def.model[comp] = copy.deepcopy(target.model.get(comp))
        sizes = model_def.model.setdefault("file_sizes", {})
        for name, size in target.model.get("file_sizes", {}).items():
            sizes.setdefault(name, size)

    def get(self, model_type: str) -> ModelDef:
        if model_type not in self.types:
            raise ModelDefinitionError(f"unknown model type {model_type!r}; known types: "
                                       f"{', '.join(sorted(self.types))}")
        return self.types[model_type]

    def handler(self, model_type: str):
        return self.handlers[self.get(model_type).architecture]

    def default_settings(self, model_type: str, **overrides) -> GenerationSettings:
        """Family defaults, then the model JSON's, then the caller's."""
        model_def = self.get(model_type)
        data = {**self.handler(model_type).default_settings(model_def.architecture), **model_def.defaults}
        data.update({k: v for k, v in overrides.items() if v is not None})
        data.setdefault("prompt", "")
        return GenerationSettings.from_dict({**data, "model_type": model_type})


def read_model_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelDefinitionError(f"{path}: model JSON not found") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelDefinitionError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelDefinitionError(f"{path}: a model JSON is an object with a \"model\" block")
    return data


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
