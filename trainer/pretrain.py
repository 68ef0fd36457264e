"""Pretrain a Llama on token shards: the pretraining recipe of the one training loop (`trainer.loop`).

    python -m trainer.pretrain --config configs/train/debug.toml data.train_dir=DIR/train run.out_dir=runs/x
    torchrun --standalone --nproc-per-node 8 -m trainer.pretrain --config configs/train/1b.toml ...

Overrides are dotted ``section.key=value`` pairs (see `trainer.config`). What is
pretraining's own: a freshly initialized model (`trainer.parallelize.build_model`),
packed next-token batches memory-mapped from token shards (`trainer.data`), and the
plain next-token loss. Resume, checkpoints, metrics, clipping and the rest are the
loop's, shared with SFT and DPO.

Outputs in ``run.out_dir``: ``checkpoints/step-%08d/``, ``metrics.jsonl``,
``loss.png``, ``final/`` (consolidated weights + config.json), ``train_config.json``
and, last, ``DONE.json`` (`trainer.summary`) -- the Prefect pretrain stage waits for it.
Setting ``KILN_TRAIN_STOP_AFTER_STEP=k`` makes the run exit with code 75 right after
step k, as if killed: the tests use it to exercise resume.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kiln.errors import KilnError
from trainer.checkpoint import export_final
from trainer.config import TrainConfig
from trainer.data import PackedTokenDataset, TokenLoader, to_device, val_batches
from trainer.loop import EXIT_STOPPED, STOP_ENV, Batch, Parts, Recipe, StopRequested, all_reduce_mean, run_main
from trainer.parallelize import DistEnv, autocast_context, build_model
from trainer.state import TrainState

__all__ = ["EXIT_STOPPED", "STOP_ENV", "PretrainRecipe", "StopRequested", "lm_loss", "main"]

log = logging.getLogger("trainer")


def check_data(cfg: TrainConfig, vocab_size: int) -> None:
    """Fail before building anything if the token shards do not fit the model."""
    if not cfg.data.train_dir:
        raise KilnError("train config: data.train_dir is empty; set it to <tokens artifact>/train")
    for split in (cfg.data.train_dir, cfg.data.val_dir):
        for shard in Path(split).glob("*/manifest.json") if split else []:
            data_vocab = json.loads(shard.read_text()).get("vocab_size", 0)
            if data_vocab > vocab_size:
                raise KilnError(f"{shard}: token ids go up to {data_vocab - 1} but the model's vocab_size is "
                                f"{vocab_size}; set model.overrides.vocab_size to the tokenizer's model_vocab_size")


def lm_loss(model: nn.Module, batch: Batch, dist: DistEnv) -> tuple[Tensor, dict[str, Tensor]]:
    """Next-token loss of one (inputs, targets) micro-batch; also the throughput benchmark's step."""
    x, y = (to_device(t, dist.device) for t in batch)
    _, loss = model(x, y)
    return loss, {}


@torch.no_grad()
def evaluate(model: nn.Module, val_set: PackedTokenDataset, cfg: TrainConfig, dist: DistEnv) -> float | None:
    """Mean loss over the first `run.val_batches` val micro-batches of every rank (same ones each time)."""
    model.eval()
    total = torch.zeros(2, device=dist.device)  # (sum of losses, batches)
    for x, y in val_batches(val_set, cfg.data.micro_batch_size, cfg.run.val_batches,
                            rank=dist.rank, world_size=dist.world_size):
        with autocast_context(dist, cfg.run):
            _, loss = model(to_device(x, dist.device), to_device(y, dist.device))
        total += torch.stack([loss.float(), torch.ones((), device=dist.device)])
    model.train()
    total = all_reduce_mean(total, dist)
    return float(total[0] / total[1]) if total[1] > 0 else None


class PretrainRecipe(Recipe[TrainConfig]):
    """A fresh model on token shards, next-token loss, validation on the val split."""

    kind = "pretrain"
    config_type = TrainConfig

    def build(self) -> Parts:
        cfg, dist = self.cfg, self.dist
        model_cfg = cfg.model_config()
        check_data(cfg, model_cfg.vocab_size)
        model, raw = build_model(model_cfg, cfg.run, dist)
        train_set = PackedTokenDataset(cfg.data.train_dir, cfg.data.seq_len)
        loader = TokenLoader(train_set, cfg.data.micro_batch_size, seed=cfg.run.seed, rank=dist.rank,
                             world_size=dist.world_size, num_workers=cfg.data.num_workers,
                             source_weights=cfg.data.source_weights)
        self.val_set = (PackedTokenDataset(cfg.data.val_dir, cfg.data.seq_len)
                        if cfg.data.val_dir and cfg.run.val_batches else None)
        if self.val_set is not None and len(self.val_set) < cfg.data.micro_batch_size * dist.world_size:
            log.warning("%s: %d val sequences cannot fill one micro-batch per rank; validation is off",
                        cfg.data.val_dir, len(self.val_set))
        log.info("model %s | %d tokens/step | train %d tokens", cfg.model.preset, cfg.tokens_per_step,
                 train_set.n_tokens)
        self.parts = Parts(model, raw, model_cfg, loader)
        return self.parts

    def step(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        return lm_loss(self.parts.model, batch, self.dist)

    def validate(self) -> dict[str, float] | None:
        loss = evaluate(self.parts.model, self.val_set, self.cfg, self.dist) if self.val_set is not None else None
        return None if loss is None else {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}

    def export(self, weights: dict[str, Tensor], out_dir: Path, state: TrainState) -> None:
        export_final(weights, self.parts.model_cfg, out_dir / "final", dtype=self.cfg.checkpoint.export_dtype,
                     extra={"kind": self.kind, "step": state.step, "tokens_seen": state.tokens_seen})

    def summary_fields(self) -> dict[str, Any]:
        return {"preset": self.cfg.model.preset}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (0 ok, 2 config/data error, 75 stopped early)."""
    return run_main(argv, PretrainRecipe, __doc__)


if __name__ == "__main__":
    sys.exit(main())
