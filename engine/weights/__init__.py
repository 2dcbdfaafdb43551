"""Weights on disk: file references and downloads, safetensors reading, INT8 files, putting tensors into models."""
