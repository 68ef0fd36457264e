"""``DONE.json``: the summary a finished training run writes last, as one typed schema.

    TrainSummary(kind="pretrain", steps=..., ...).write(out_dir)
    done = TrainSummary.read(out_dir)           # KilnError naming the file if missing or garbled

The training loop (`trainer.loop`) is the only writer; the pipeline stages and the
flow summary read it through `read`, so a renamed field fails in one place, loudly,
instead of as a ``KeyError`` in whichever reader looked first. Its presence is also
the stage's signal that the run finished: it is written after ``final/`` and
``loss.png``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from kiln.config import from_dict
from kiln.errors import KilnError
from storage.atomic import atomic_write_text

DONE_FILE = "DONE.json"


@dataclass(frozen=True)
class TrainSummary:
    kind: str
    """Which recipe trained: pretrain, sft or dpo."""
    steps: int
    """Optimizer steps done (the run's `run.steps` once finished)."""
    tokens_seen: int
    """Input positions consumed over all ranks (padding included for fine-tuning rows)."""
    final_loss: float | None
    """Training loss of the last logged step (None if no step was logged in this run's history)."""
    val_loss: float | None
    """Last validation loss; None without a val split."""
    best_val_loss: float | None
    """Lowest validation loss of the run."""
    elapsed_s: float
    """Training wall time summed over every resumed session."""
    params: int
    """Parameters of the model (a tied matrix counts once)."""
    trainable_params: int
    """Parameters that trained: all of them, or the adapters of a LoRA run."""
    world_size: int
    """Ranks of the last session."""
    checkpoint: str
    """The final checkpoint, relative to the run directory."""
    precision: str = "bf16"
    """run.precision of the run: bf16, fp8-tensorwise or fp8-rowwise (benchmarks report it)."""
    final_dir: str = "final"
    """Consolidated weights + config.json, relative to the run directory."""
    preset: str = ""
    """Pretraining's model preset; empty for fine-tuning (the base model decides the shape)."""
    lora_rank: int = 0
    """Adapter rank of a LoRA run; 0 = full training."""
    adapter_dir: str | None = None
    """The adapters alone (LoRA runs), relative to the run directory."""
    checkpoint_stall_s_max: float | None = None
    """Longest time the loop was blocked by one checkpoint save in the last session (None: no save)."""
    checkpoint_stall_s_mean: float | None = None
    """Mean of those stalls (each save's is a ``"kind": "checkpoint"`` line of metrics.jsonl)."""
    checkpoint_gb_per_s: float | None = None
    """Mean rate of the whole saves (copy, serialize, fsync, rename) of the last session, per rank."""

    def write(self, out_dir: str | Path) -> Path:
        path = Path(out_dir) / DONE_FILE
        atomic_write_text(path, json.dumps(dataclasses.asdict(self), indent=2))
        return path

    @classmethod
    def read(cls, run_dir: str | Path) -> TrainSummary:
        """The summary in `run_dir` (or the DONE.json file itself); KilnError naming the file if unusable."""
        path = Path(run_dir)
        path = path if path.name == DONE_FILE else path / DONE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KilnError(f"{path}: missing; the training run did not finish (see train.log beside it)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KilnError(f"{path}: not a readable training summary ({exc}); rerun the stage") from None
        return from_dict(cls, data, where=str(path))
