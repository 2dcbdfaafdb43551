"""Sampling: samplers (pure functions of model_fn, x, sigmas), noise schedules and step windows."""
