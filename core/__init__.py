"""The app's own non-model code: settings, registry, files, samplers, outputs, CLI."""

APP_NAME = "zimage-studio"
APP_VERSION = "0.1.0"
