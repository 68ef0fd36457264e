"""The loss curve PNG: every logged series is visible, however short the run."""

from __future__ import annotations

import json

import pytest

from trainer.metrics import loss_figure, plot_loss_curve

pytest.importorskip("matplotlib")

# A 4-step DPO run with run.log_every=10 and run.val_every=2 (the pipeline's end-to-end test) logs this.
DPO_METRICS = [
    {"kind": "val", "step": 2, "val_loss": 0.699, "val_reward_margin": -0.0116, "val_reward_accuracy": 0.5},
    {"kind": "train", "step": 4, "loss": 0.680, "reward_margin": 0.027, "reward_accuracy": 0.75, "mfu": None},
    {"kind": "val", "step": 4, "val_loss": 0.701, "val_reward_margin": -0.0151, "val_reward_accuracy": 0.5},
]


def visible(line) -> bool:
    """A matplotlib line draws something: two points joined, or a marker on each."""
    return len(line.get_xdata()) > 1 or (line.get_marker() not in (None, "None", "", " ")
                                         and line.get_markersize() > 0)


def test_a_one_point_training_curve_is_drawn(tmp_path):
    import matplotlib.pyplot as plt

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(m) + "\n" for m in DPO_METRICS))
    fig = loss_figure(metrics)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    plt.close(fig)
    assert list(lines["train"].get_xdata()) == [4] and list(lines["train"].get_ydata()) == [0.680]
    assert visible(lines["train"]) and visible(lines["val"])
    assert plot_loss_curve(metrics, tmp_path / "loss.png") == tmp_path / "loss.png"


def test_several_runs_share_one_figure_labeled_by_file(tmp_path):
    """fp8_quality's bf16-vs-FP8 plot: each run's train and val lines, named by its file, in one colour."""
    import matplotlib.pyplot as plt

    paths = []
    for name, offset in (("bf16", 0.0), ("fp8-tensorwise", 0.1)):
        path = tmp_path / f"{name}.jsonl"
        rows = [{"kind": "train", "step": s, "loss": 5 - s / 10 + offset} for s in range(1, 11)]
        rows.append({"kind": "val", "step": 10, "val_loss": 4.2 + offset})
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    fig = loss_figure(*paths)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    plt.close(fig)
    assert set(lines) == {"bf16 train", "bf16 val", "fp8-tensorwise train", "fp8-tensorwise val"}
    assert lines["bf16 train"].get_color() == lines["bf16 val"].get_color() != lines["fp8-tensorwise val"].get_color()
    assert list(lines["fp8-tensorwise val"].get_ydata()) == [4.3]
