"""`TrainState`: everything about a run's progress that a checkpoint restores, as one typed record.

Saved as ``trainer_state.json`` in each checkpoint (`trainer.checkpoint`), except the
wall-clock fields (`LOG_FIELDS`): they go to the checkpoint's ``run.json`` log, so two
runs of one config write byte-identical checkpoints however fast they ran. The rest
of a resume lives beside it: model and optimizer tensors, and per-rank RNG states
(``rng-rank*.pt``; tensors, so they stay out of the JSON). The lr schedule needs no
state of its own: it is a pure function of `step`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

LOG_FIELDS = ("elapsed_s",)
"""Fields that depend on how fast the run went, not on what it computed."""


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps done."""
    tokens_seen: int = 0
    """Input positions consumed over all ranks."""
    elapsed_s: float = 0.0
    """Training wall time over all sessions of the run (a resume continues the clock)."""
    last_loss: float | None = None
    """Training loss at the last logged step."""
    last_val_loss: float | None = None
    best_val_loss: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
    """The loader's `state_dict` (epoch, position, mixing schedule): resume reads the exact next batch."""

    def record_val(self, loss: float) -> None:
        self.last_val_loss = loss
        if self.best_val_loss is None or loss < self.best_val_loss:
            self.best_val_loss = loss

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def content_dict(self) -> dict[str, Any]:
        """`to_dict` without the wall-clock `LOG_FIELDS`: what ``trainer_state.json`` holds."""
        return {k: v for k, v in self.to_dict().items() if k not in LOG_FIELDS}

    def log_dict(self) -> dict[str, Any]:
        """Just the `LOG_FIELDS` (the checkpoint's ``run.json``)."""
        return {k: getattr(self, k) for k in LOG_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        """From ``trainer_state.json`` (plus ``run.json``'s fields); unknown keys (e.g. the saved ``scheduler``
        step) are ignored, missing ones keep their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
