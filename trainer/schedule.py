"""Learning-rate schedules as pure functions of the step: nothing to save, nothing to drift.

Steps are 0-based optimizer steps ``0 .. total_steps - 1``. All kinds share a
linear warmup ``lr * (step + 1) / (warmup + 1)`` (nanoGPT's form: step 0 already
moves the weights a little, and warmup ends exactly at `lr`).

- cosine: after warmup, half a cosine from `lr` down to `min_lr` at the last step.
- wsd (warmup-stable-decay, MiniCPM / OLMo-2 style): `lr` until the last
  ``decay_fraction`` of the run, then linear to `min_lr` at the last step. Any
  checkpoint from the stable phase can be "cooled down" later by a short decay.
- constant: `lr` after warmup (for debugging and fine-tuning).

Because the schedule is a function of the step only, a resumed run needs just the
step number to continue the exact same curve.
"""

from __future__ import annotations

import math

from trainer.config import OptimSection, ScheduleSection


def warmup_lr(step: int, lr: float, warmup_steps: int) -> float:
    return lr * (step + 1) / (warmup_steps + 1)


def cosine_lr(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return warmup_lr(step, lr, warmup_steps)
    span = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def wsd_lr(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int,
           decay_fraction: float) -> float:
    if step < warmup_steps:
        return warmup_lr(step, lr, warmup_steps)
    decay_steps = max(1, round(decay_fraction * total_steps))
    decay_start = max(warmup_steps, total_steps - decay_steps)
    if step < decay_start:
        return lr
    progress = min(1.0, (step - decay_start) / max(1, total_steps - 1 - decay_start))
    return lr + progress * (min_lr - lr)


def constant_lr(step: int, *, lr: float, warmup_steps: int) -> float:
    return warmup_lr(step, lr, warmup_steps) if step < warmup_steps else lr


def lr_at(step: int, schedule: ScheduleSection, optim: OptimSection, total_steps: int) -> float:
    """The learning rate of optimizer step `step` under the configured schedule."""
    if schedule.kind == "cosine":
        return cosine_lr(step, lr=optim.lr, min_lr=optim.min_lr, warmup_steps=schedule.warmup_steps,
                         total_steps=total_steps)
    if schedule.kind == "wsd":
        return wsd_lr(step, lr=optim.lr, min_lr=optim.min_lr, warmup_steps=schedule.warmup_steps,
                      total_steps=total_steps, decay_fraction=schedule.decay_steps_fraction)
    return constant_lr(step, lr=optim.lr, warmup_steps=schedule.warmup_steps)
