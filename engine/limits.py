"""What one job may ask for, the same on every front-end (page, API, CLI): the engine checks a request
against these when it prepares it, and the page's sliders stop at them. The settings' own ranges
(engine.settings) say what is meaningful; these say what this machine's owner lets one job take."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import SettingsError


@dataclass(frozen=True)
class Limits:
    batch_size: int = 8  # images in one pass
    count: int = 20  # passes (successive seeds) in one job
    pass_pixels: int = 4096 * 4096  # width x height x batch size of one pass: bounds the longest single step

    def validate(self) -> "Limits":
        for name in ("batch_size", "count", "pass_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingsError(f"limit {name} must be a whole number of at least 1, got {value!r}")
        return self

    def check(self, settings, step_range: tuple[int, int]) -> None:
        """SettingsError naming the limit (and the flag that raises it) when `settings` ask for more."""
        lo, hi = step_range
        if not lo <= settings.num_inference_steps <= hi:
            raise SettingsError(f"steps {settings.num_inference_steps}: {settings.model_type} takes {lo} to {hi} "
                                "steps")
        if settings.batch_size > self.batch_size:
            raise SettingsError(f"batch size {settings.batch_size} is above the limit of {self.batch_size} images "
                                "per pass (--max-batch)")
        if settings.count > self.count:
            raise SettingsError(f"image count {settings.count} is above the limit of {self.count} batches per job "
                                "(--max-count)")
        pixels = settings.width * settings.height * settings.batch_size
        if pixels > self.pass_pixels:
            raise SettingsError(f"{settings.batch_size} x {settings.width}x{settings.height} is "
                                f"{pixels / 2**20:.1f} megapixels in one pass, above the limit of "
                                f"{self.pass_pixels / 2**20:.1f} (--max-megapixels): fewer images per batch or "
                                "a smaller size")

    def bound(self, field: str, lo, hi) -> tuple:
        """A settings field's range as the page offers it, within these limits."""
        cap = {"batch_size": self.batch_size, "count": self.count}.get(field)
        return (lo, min(hi, cap)) if cap is not None else (lo, hi)
