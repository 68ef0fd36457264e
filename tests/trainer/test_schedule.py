"""LR schedules at the steps that matter: warmup start/end, midpoint, the stable phase, the last step."""

from __future__ import annotations

import math

import pytest

from trainer.config import OptimSection, ScheduleSection
from trainer.schedule import cosine_lr, lr_at, wsd_lr

LR, MIN = 1e-3, 1e-4


def test_cosine_key_steps():
    kw = dict(lr=LR, min_lr=MIN, warmup_steps=10, total_steps=110)
    assert cosine_lr(0, **kw) == pytest.approx(LR / 11)  # step 0 already moves the weights
    assert cosine_lr(9, **kw) == pytest.approx(LR * 10 / 11)
    assert cosine_lr(10, **kw) == pytest.approx(LR)  # warmup ends exactly at the peak
    mid = 10 + (110 - 1 - 10) / 2
    assert cosine_lr(int(mid), **kw) == pytest.approx(MIN + 0.5 * (1 + math.cos(math.pi * 49 / 99)) * (LR - MIN))
    assert cosine_lr(109, **kw) == pytest.approx(MIN)  # the last step trains at min_lr
    assert cosine_lr(500, **kw) == pytest.approx(MIN)  # and it stays there past the end
    decay = [cosine_lr(s, **kw) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))


def test_wsd_is_flat_then_decays_linearly_over_the_last_fraction():
    kw = dict(lr=LR, min_lr=MIN, warmup_steps=10, total_steps=100, decay_fraction=0.2)
    assert wsd_lr(5, **kw) == pytest.approx(LR * 6 / 11)
    assert [wsd_lr(s, **kw) for s in (10, 50, 79)] == [LR, LR, LR]
    assert wsd_lr(80, **kw) == pytest.approx(LR)  # decay starts at step 100 - 20
    assert wsd_lr(99, **kw) == pytest.approx(MIN)
    assert wsd_lr(89, **kw) == pytest.approx(LR + (9 / 19) * (MIN - LR))


@pytest.mark.parametrize("kind", ["cosine", "wsd", "constant"])
def test_lr_at_dispatches_and_shares_the_warmup(kind):
    sched, optim = ScheduleSection(kind=kind, warmup_steps=4), OptimSection(lr=LR, min_lr=MIN)
    assert lr_at(0, sched, optim, 50) == pytest.approx(LR / 5)
    assert lr_at(4, sched, optim, 50) == pytest.approx(LR)
    assert lr_at(49, sched, optim, 50) == pytest.approx(LR if kind == "constant" else MIN)


def test_no_warmup_starts_at_the_peak():
    assert lr_at(0, ScheduleSection(warmup_steps=0), OptimSection(lr=LR, min_lr=MIN), 10) == pytest.approx(LR)
