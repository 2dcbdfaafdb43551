"""The training loop: batches, the flow-matching step, checkpoints, samples, Stop and out-of-memory.

Randomness: the batch order of epoch e and the noise and noise levels of step s come from generators seeded
with (seed, e) and (seed, s), so a run resumed from a checkpoint at step s draws exactly what the
uninterrupted run would have; torch's global generator states are kept in the checkpoint as well.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import Interrupted, UserError
from engine.training import checkpoint as C
from engine.training.events import TrainCheckpoint, TrainProgress, TrainSamples

_A, _B, _C = 6364136223846793005, 1442695040888963407, 0x9E3779B97F4A7C15


def generator(seed: int, index: int, stream: int) -> torch.Generator:
    """A CPU generator for (seed, index) in one of two streams (0: epoch order, 1: step noise)."""
    return torch.Generator().manual_seed((seed * _A + index * _B + stream * _C) % 2**63)


@dataclass
class Sample:
    latent: torch.Tensor  # [C, h, w] float32, CPU
    caption: str
    bucket: tuple[int, int]  # image size (W, H)


class Batches:
    """Epochs of same-bucket batches in a seeded random order; batch(s) is a pure function of (seed, s)."""

    def __init__(self, samples: list[Sample], batch_size: int, seed: int):
        self.samples, self.batch_size, self.seed = samples, batch_size, seed
        self.groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(samples):
            self.groups.setdefault(s.bucket, []).append(i)
        self.per_epoch = sum(-(-len(g) // batch_size) for g in self.groups.values())
        self._epoch, self._plan = -1, []

    def plan(self, epoch: int) -> list[list[int]]:
        gen = generator(self.seed, epoch, 0)
        batches = []
        for bucket in sorted(self.groups):
            group = self.groups[bucket]
            order = [group[i] for i in torch.randperm(len(group), generator=gen).tolist()]
            batches += [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]

    def batch(self, step: int) -> list[int]:
        epoch = step // self.per_epoch
        if epoch != self._epoch:
            self._epoch, self._plan = epoch, self.plan(epoch)
        return self._plan[step % self.per_epoch]


@dataclass
class Loop:
    """One run's moving parts; `run()` trains from `step` to `settings.steps`."""

    settings: object  # TrainSettings (validated)
    backend: object  # the family's side (see engine.training.run)
    lora: object  # TrainableLora, attached
    optimizer: torch.optim.Optimizer
    optimizer_name: str
    batches: Batches
    levels: object  # NoiseLevels
    captions: dict  # caption -> features [tokens, dim] (CPU); empty when encoded each step
    ctx: object  # the job's context: check(), report(), note(), stage()
    run_dir: Path
    dataset_hash: str
    save_lora: object  # function(step) -> Path of a LoRA file of this step
    make_samples: object  # function(step) -> [(PNG, prompt)]
    step: int = 0
    history: list = field(default_factory=list)
    saved_step: int = -1
    times: list = field(default_factory=list)
    samples: list = field(default_factory=list)
    stepping: bool = False  # inside optimizer.step(): the factors may be half updated

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.safetensors"

    def run(self) -> None:
        s = self.settings
        while self.step < s.steps:
            self.ctx.check()  # Stop: handled below, between steps, where the state is whole
            self.train_step()
            if s.save_every and self.step % s.save_every == 0 and self.step < s.steps:
                self.save()
            if s.sample_every and self.step % s.sample_every == 0 and self.step < s.steps:
                self.sample()

    def guarded(self) -> None:
        """run(), saving a checkpoint when stopped or out of memory, then re-raising with what to do."""
        try:
            self.run()
        except Interrupted:
            if self.step >= self.settings.steps:
                return  # Stop came with the last step: the run is complete, let it finish
            path = self.save()
            message = (f"stopped at step {self.step} of {self.settings.steps}: checkpoint {path}; continue with "
                       f"--resume (same --name)")
            self.ctx.note(message)
            raise Interrupted(message) from None
        except torch.cuda.OutOfMemoryError:
            raise UserError(self.out_of_memory()) from None

    def out_of_memory(self) -> str:
        import gc

        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
        kept = f"the checkpoint of step {self.saved_step} is kept" if self.saved_step > 0 else "no checkpoint yet"
        try:
            if self.step > self.saved_step and not self.stepping:  # the failed step changed nothing
                self.save()
                kept = f"a checkpoint of step {self.step} was written"
        except Exception:  # noqa: BLE001 - the message below matters more than a second failure
            pass
        s = self.settings
        return (f"out of GPU memory at step {self.step + 1} (images up to {max(s.resolutions)} px, batch "
                f"{s.batch_size}, rank {s.rank}): lower --resolution or --batch, use --transformer-quantization "
                f"int8, keep gradient checkpointing on, or close other GPU programs; {kept} (continue with --resume)")

    # ---- one step --------------------------------------------------------------------------------------

    def train_step(self) -> float:
        t0 = time.perf_counter()
        indices = self.batches.batch(self.step)
        batch = [self.batches.samples[i] for i in indices]
        gen = generator(self.settings.seed, self.step, 1)
        x0 = torch.stack([b.latent for b in batch])
        noise = torch.randn(x0.shape, generator=gen)
        sigma, weight = self.levels.sample(len(batch), gen)
        device = self.backend.device
        x0, noise, sigma, weight = (t.to(device) for t in (x0, noise, sigma, weight))
        s = sigma.view(-1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        pred = self.backend.predict(x_t, sigma, self.features([b.caption for b in batch]))
        per_sample = ((pred.float() - (noise - x0)) ** 2).mean(dim=(1, 2, 3))
        loss = (per_sample * weight).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.lora.parameters(), 1.0)
        self.stepping = True
        self.optimizer.step()
        self.stepping = False
        self.optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        self.step += 1
        self.history.append(value)
        self.times = (self.times + [time.perf_counter() - t0])[-20:]
        per_step = sum(self.times) / len(self.times)
        self.ctx.report(TrainProgress(self.step, self.settings.steps, value, per_step,
                                      per_step * (self.settings.steps - self.step), batch[0].bucket))
        return value

    def features(self, captions: list[str]) -> list[torch.Tensor]:
        device = self.backend.device
        if self.captions:
            return [self.captions[c].to(device) for c in captions]
        fresh = self.backend.encode_prompts(captions, cached=False)  # the benchmark's uncached comparison
        return [fresh[c].to(device) for c in captions]

    # ---- saving ------------------------------------------------------------------------------------------

    def save(self) -> Path:
        """Write the checkpoint of the current step (and a LoRA file of it) unless it is written already."""
        if self.saved_step == self.step:
            return self.checkpoint_path
        C.save(self.checkpoint_path, C.Checkpoint(
            step=self.step, settings=self.settings.to_dict(), dataset_hash=self.dataset_hash,
            lora=self.lora.tensors(), optimizer_name=self.optimizer_name,
            optimizer_state=self.optimizer.state_dict(), history=list(self.history), rng=C.rng_state()))
        self.saved_step = self.step
        lora = self.save_lora(self.step)
        self._report(TrainCheckpoint(self.step, self.checkpoint_path, lora))
        return self.checkpoint_path

    def sample(self) -> None:
        images = self.make_samples(self.step)
        self.samples += [(self.step, path, prompt) for path, prompt in images]
        self._report(TrainSamples(self.step, images))

    def _report(self, event) -> None:
        """Report an event even while stopping (report() raises once Stop was pressed)."""
        try:
            self.ctx.report(event)
        except Interrupted:
            pass  # the loop stops at its next check

    def restore(self, ckpt: C.Checkpoint) -> None:
        self.lora.load(ckpt.lora)
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.step = self.saved_step = ckpt.step
        self.history = list(ckpt.history)
        C.restore_rng(ckpt.rng)
