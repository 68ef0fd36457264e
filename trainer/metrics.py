"""Training metrics: one JSON line per log step or validation pass, a loss PNG, optional W&B/TensorBoard.

``metrics.jsonl`` lines look like

    {"kind": "train", "step": 10, "loss": 5.91, "lr": 3e-4, "grad_norm": 1.2, "tokens_per_s": 41000.0,
     "mfu": 0.31, "peak_mem_gb": 21.5, "tokens_seen": 1310720, "elapsed": 32.1}   # mfu null on CPU
    {"kind": "val", "step": 500, "val_loss": 4.02, "val_ppl": 55.7, "tokens_seen": ..., "elapsed": ...}

Only rank 0 writes. Each line is flushed, so the file is readable while training
and survives a crash; a resumed run first truncates lines past its checkpoint so the
curve has no duplicates. matplotlib, wandb and tensorboard are imported only when used.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("trainer")


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / (1e9 if sys.platform == "darwin" else 1e6)


def truncate_after(path: Path, step: int) -> None:
    """Drop lines logged after `step` (a resumed run re-logs them)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [m for m in lines if kind is None or m.get("kind") == kind]


class MetricsLogger:
    """Appends metrics lines (rank 0 only) and mirrors them to wandb / TensorBoard if enabled."""

    def __init__(self, out_dir: str | Path, *, enabled: bool, wandb: bool = False, tensorboard: bool = False,
                 run_config: dict[str, Any] | None = None) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._fh = open(self.path, "a") if enabled else None  # noqa: SIM115 -- closed in close()
        self._wandb = self._init_wandb(out_dir, run_config) if enabled and wandb else None
        self._tb = self._init_tensorboard(out_dir) if enabled and tensorboard else None

    @staticmethod
    def _init_wandb(out_dir: str | Path, run_config: dict[str, Any] | None) -> Any:
        try:
            import wandb
        except ImportError:
            log.warning("run.wandb=true but wandb is not installed (pip install wandb); not logging to W&B")
            return None
        return wandb.init(project="kiln", name=Path(out_dir).name, config=run_config, dir=str(out_dir),
                          resume="allow")

    @staticmethod
    def _init_tensorboard(out_dir: str | Path) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("run.tensorboard=true but tensorboard is not installed (pip install tensorboard)")
            return None
        return SummaryWriter(str(Path(out_dir) / "tb"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled or self._fh is None:
            return
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        prefix = f"{record.get('kind', 'train')}/"
        if self._wandb is not None:
            self._wandb.log({prefix + k: v for k, v in numbers.items()}, step=record["step"])
        if self._tb is not None:
            for k, v in numbers.items():
                self._tb.add_scalar(prefix + k, v, record["step"])

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._wandb is not None:
            self._wandb.finish()
        if self._tb is not None:
            self._tb.close()


def plot_loss_curve(metrics_jsonl: str | Path, png: str | Path) -> Path | None:
    """Train (and val) loss against step as a PNG; None with a warning if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on training machines
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install matplotlib); skipping %s", png)
        return None
    fig = loss_figure(metrics_jsonl)
    out = Path(png)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out


def loss_figure(*metrics_jsonl: str | Path) -> Any:
    """The loss curve's matplotlib figure: a train and a val line per run, with a marker on every point.

    The markers matter for short runs: a run of fewer steps than ``run.log_every`` (a
    4-step DPO) logs one train point, and a one-point line without markers draws nothing.
    Several runs (a bf16 and an FP8 run, say) share the axes, each labeled by its file's
    stem and drawn in one colour.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for path in metrics_jsonl:
        prefix = f"{Path(path).stem} " if len(metrics_jsonl) > 1 else ""
        train, val = read_metrics(path, "train"), read_metrics(path, "val")
        (line,) = ax.plot([m["step"] for m in train], [m["loss"] for m in train], ".-", label=f"{prefix}train",
                          linewidth=1, markersize=4 if len(train) < 50 else 0)
        if val:
            ax.plot([m["step"] for m in val], [m["val_loss"] for m in val], "o-", label=f"{prefix}val",
                    markersize=3, color=line.get_color() if prefix else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
