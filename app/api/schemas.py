"""The API's JSON shapes (they make the OpenAPI schema). The settings body is built from GenerationSettings
itself, so it has exactly the fields a PNG's settings have, and no list to keep in step by hand."""

from __future__ import annotations

import dataclasses
import typing
from functools import lru_cache
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from engine.settings import GenerationSettings

EXAMPLE = {"model_type": "z_image", "prompt": "a red fox in fresh snow, golden hour", "seed": 42,
           "width": 1024, "height": 1024}


@lru_cache(maxsize=1)
def settings_model() -> type[BaseModel]:
    """Every settings field, optional (the model type's defaults fill the rest); unknown fields are refused.
    Values are range-checked by GenerationSettings.validate, the same check as the page's and the CLI's."""
    hints = typing.get_type_hints(GenerationSettings)
    fields = {f.name: (Optional[hints[f.name]], None) for f in dataclasses.fields(GenerationSettings)}
    fields["resolution"] = (Optional[str], Field(None, description="WIDTHxHEIGHT, instead of width and height"))
    config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]})
    return create_model("Settings", __config__=config, __doc__="The settings of one job, as stored in the "
                        "PNGs this app writes (`python app.py settings FILE.png`).", **fields)


class Progress(BaseModel):
    step: int = Field(description="steps done, over all the job's runs")
    steps: int
    fraction: float


class ImageOut(BaseModel):
    url: str = Field(description="the PNG (settings embedded); only its owner may fetch it")
    settings: dict = Field(description="the settings that reproduce this image (its seed)")


class JobOut(BaseModel):
    id: str
    url: str
    state: str = Field(description="queued, running, done, failed or cancelled")
    position: Optional[int] = Field(None, description="while queued: jobs ahead of it (0: it starts next)")
    progress: Progress
    images: list[ImageOut] = []
    error: Optional[str] = None
    notes: list[str] = []
    attempts: int = Field(0, description="runs started (a job whose worker died runs again, once)")
    worker: Optional[str] = Field(None, description="which worker runs (or ran) it, when there are several")


class FileOut(BaseModel):
    component: str
    present: bool
    file: str = Field(description="the file's name (present) or where it would be downloaded from")
    kind: str = ""
    download_bytes: Optional[int] = None


class ModelOut(BaseModel):
    type: str
    name: str
    architecture: str
    available: bool
    files: list[FileOut] = []
    problem: Optional[str] = None


class Problem(BaseModel):
    detail: str
