"""Shared fixtures: tiny random models, built once per test session, with no network."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models():
    from models.z_image import tiny

    return {"transformer": tiny.make_transformer(), "text_encoder": tiny.make_text_encoder(),
            "vae": tiny.make_vae()}


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from models.z_image.tiny import make_tokenizer

    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_json(tmp_path_factory):
    """A tiny model written by the app's own `make-test-model` code: (json path, folder)."""
    from models.z_image.tiny import write_test_model

    folder = tmp_path_factory.mktemp("tiny")
    return write_test_model(folder), folder


@pytest.fixture(scope="session")
def engine(tiny_model_json):
    from engine.engine import Engine
    from engine.weights.files import FileLocator
    from engine.registry import Registry
    from models import families

    return Engine(Registry(families(), extra_files=[tiny_model_json[0]]), FileLocator(offline=True))


def pytest_configure(config):
    # third-party deprecation chatter (gradio's pandas use, transformers' configs) is not ours to fix here
    for line in ("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore:.*deprecated.*:Warning"):
        config.addinivalue_line("filterwarnings", line)
