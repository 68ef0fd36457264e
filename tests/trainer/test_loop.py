"""The one loop: pretraining, SFT and DPO must not drift apart again.

Each recipe runs a few real steps (SFT and DPO with LoRA, so "trainable" differs from
"all parameters") while `clip_grad_norm_` is watched: every recipe must clip exactly
the parameters that train, count tokens the same way, and write the same metrics
fields and the same typed DONE.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.trainer.conftest import content_digests, dpo_args, fresh_process_rngs, sft_args, train_args
from trainer import dpo, pretrain, sft
from trainer.checkpoint import list_checkpoints
from trainer.metrics import read_metrics
from trainer.summary import TrainSummary

STEPS = 4
TRAIN_FIELDS = {"kind", "step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "peak_mem_gb", "tokens_seen",
                "elapsed"}
VAL_FIELDS = {"kind", "step", "val_loss", "tokens_seen", "elapsed"}
LORA = ["lora.rank=4", "lora.alpha=8", "lora.dropout=0.0"]


def recipe_runs(pattern_data: Path, sft_setup: dict[str, Path], dpo_setup: dict[str, Path],
                root: Path) -> dict[str, tuple[Callable[[list[str]], int], list[str], int]]:
    """Per recipe: (main, args for a 4-step run with grad accumulation 2, rows of seq_len per micro-batch)."""
    common = [f"run.steps={STEPS}", "run.val_every=2", "checkpoint.every_steps=2", "data.grad_accum_steps=2",
              "schedule.warmup_steps=1"]
    return {
        "pretrain": (pretrain.main, train_args(pattern_data, root / "pretrain", *common), 4),
        "sft": (sft.main, sft_args(sft_setup, root / "sft", *common, *LORA), 4),
        "dpo": (dpo.main, dpo_args(dpo_setup, root / "dpo", *common, *LORA), 2 * 4),  # chosen + rejected rows
    }


@pytest.fixture(scope="module")
def runs(pattern_data, sft_setup, dpo_setup, tmp_path_factory) -> dict[str, dict]:
    """Each recipe's run directory, seq_len and rows, and the parameters every clip call saw."""
    root = tmp_path_factory.mktemp("loops")
    real_clip = torch.nn.utils.clip_grad_norm_
    out: dict[str, dict] = {}
    with pytest.MonkeyPatch.context() as mp:
        for kind, (main, args, rows) in recipe_runs(pattern_data, sft_setup, dpo_setup, root).items():
            clipped: list[list[torch.nn.Parameter]] = []

            def spy(params, *a, _seen=clipped, **kw):
                params = list(params)
                _seen.append(params)
                return real_clip(params, *a, **kw)

            mp.setattr(torch.nn.utils, "clip_grad_norm_", spy)
            torch.set_num_threads(1)
            assert main(args) == 0, kind
            seq_len = int(next(a for a in args if a.startswith("data.seq_len=")).split("=")[1])
            out[kind] = {"dir": Path(next(a for a in args if a.startswith("run.out_dir=")).split("=", 1)[1]),
                         "clipped": clipped, "seq_len": seq_len, "rows": rows}
    return out


@pytest.mark.parametrize("kind", ["pretrain", "sft", "dpo"])
def test_every_recipe_clips_exactly_the_trainable_parameters(runs, kind):
    run = runs[kind]
    done = TrainSummary.read(run["dir"])
    assert len(run["clipped"]) == STEPS  # one clip per optimizer step, after all micro-batches
    for params in run["clipped"]:
        assert all(p.requires_grad for p in params)
        assert sum(p.numel() for p in params) == done.trainable_params
    if kind == "pretrain":
        assert done.trainable_params == done.params
    else:  # LoRA: the frozen base must not enter the norm
        assert 0 < done.trainable_params < done.params and done.lora_rank == 4 and done.adapter_dir == "adapter"


def test_every_recipe_writes_the_same_metrics_and_summary(runs):
    for kind, run in runs.items():
        train = read_metrics(run["dir"] / "metrics.jsonl", "train")
        val = read_metrics(run["dir"] / "metrics.jsonl", "val")
        assert [m["step"] for m in train] == list(range(1, STEPS + 1)), kind
        assert all(set(m) >= TRAIN_FIELDS for m in train), kind
        assert [m["step"] for m in val] == [2, 4] and all(set(m) >= VAL_FIELDS for m in val), kind
        # Tokens are input positions over all ranks: rows x seq_len x micro-batches per step.
        assert train[-1]["tokens_seen"] == STEPS * 2 * run["rows"] * run["seq_len"], kind
        done = TrainSummary.read(run["dir"])
        assert done.kind == kind and done.steps == STEPS and done.final_loss == train[-1]["loss"]
        assert done.val_loss == val[-1]["val_loss"] and done.tokens_seen == train[-1]["tokens_seen"]
        assert (run["dir"] / done.checkpoint) in list_checkpoints(run["dir"])
        assert (run["dir"] / done.final_dir / "config.json").is_file()
        assert (run["dir"] / "loss.png").read_bytes()[:4] == b"\x89PNG"
        state = json.loads((run["dir"] / done.checkpoint / "trainer_state.json").read_text())
        assert {"step", "tokens_seen", "last_loss", "best_val_loss", "data"} <= set(state)
        assert "elapsed_s" not in state  # wall time is a run log: the checkpoint's run.json
        assert json.loads((run["dir"] / done.checkpoint / "run.json").read_text())["elapsed_s"] > 0


def test_every_recipe_writes_the_same_content_twice(runs, pattern_data, sft_setup, dpo_setup, tmp_path):
    """Another directory, another interpreter's RNGs: the same weights, optimizer, RNG and checkpoint bytes."""
    for kind, (main, args, _) in recipe_runs(pattern_data, sft_setup, dpo_setup, tmp_path).items():
        fresh_process_rngs()
        assert main(args) == 0, kind
        ours = content_digests(tmp_path / kind)
        assert "final/model.safetensors" in ours and "checkpoints/step-00000004/rng-rank00000.pt" in ours, kind
        assert ours == content_digests(runs[kind]["dir"]), kind
