"""Placing loaded models in memory: offload profiles and the memory monitor."""
