"""The model-agnostic engine: settings, registry, job queue, outputs; sampling, weights, placement, LoRA, images."""

APP_NAME = "zimage-studio"
APP_VERSION = "0.1.0"
