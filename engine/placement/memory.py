"""Peak memory per generation stage: process RAM (peak RSS) and, on CUDA, VRAM.

On Linux the kernel's own peak-RSS counter (VmHWM) is reset at each stage start, so short spikes are
counted; elsewhere a background thread samples RSS every few milliseconds. VRAM figures are PyTorch's
peaks: "reserved" is what the GPU driver sees (add a few hundred MB of CUDA context for nvidia-smi),
"allocated" what tensors used.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("zimage.memory")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _kernel_peak() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_kernel_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # Linux >= 4.0: VmHWM := current RSS
        return True
    except OSError:
        return False


class _Sampler:
    """Peak RSS by polling, where the kernel counter cannot be reset."""

    def __init__(self, interval: float = 0.005):
        self.peak = current_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval):
        while not self._stop.wait(interval):
            self.peak = max(self.peak, current_rss())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, current_rss())


class MemoryMonitor:
    """Records peak RAM and VRAM of named stages; a stage met again (one per image run) keeps its maximum."""

    def __init__(self, device=None):
        import torch

        self.cuda = device is not None and getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available()
        self.device = device
        self.stages: dict[str, dict] = {}

    @contextmanager
    def stage(self, name: str):
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        sampler = None if _reset_kernel_peak() and _kernel_peak() is not None else _Sampler()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize(self.device)
            ram = sampler.stop() if sampler else max(_kernel_peak() or 0, current_rss())
            figures = {"peak_ram_bytes": ram}
            if self.cuda:
                figures["peak_vram_bytes"] = torch.cuda.max_memory_reserved(self.device)
                figures["peak_vram_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
            old = self.stages.get(name, {})
            self.stages[name] = {k: max(v, old.get(k, 0)) for k, v in figures.items()}

    def as_dict(self) -> dict:
        return {name: dict(figures) for name, figures in self.stages.items()}


def summary(report: dict) -> str:
    """One line: `text encoding: RAM 1.2 GiB, VRAM 3.4 GiB; denoising: ...`."""
    parts = []
    for name, figures in report.items():
        text = f"{name}: RAM {figures['peak_ram_bytes'] / 2**30:.2f} GiB"
        if "peak_vram_bytes" in figures:
            text += f", VRAM {figures['peak_vram_bytes'] / 2**30:.2f} GiB"
        parts.append(text)
    return "; ".join(parts)


def log_report(report: dict) -> None:
    if report:
        log.info("peak memory per stage: %s", summary(report))
