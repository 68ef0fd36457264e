"""Supervised fine-tuning (full or LoRA) on a chat artifact: the SFT recipe of the one loop (`trainer.loop`).

    python -m trainer.sft --config configs/sft/debug.toml base.dir=<pretrain artifact> \\
        data.dir=<sft_data artifact> run.out_dir=runs/sft
    torchrun --standalone --nproc-per-node 8 -m trainer.sft --config configs/sft/1b.toml ...

The model starts from `base.dir` (`trainer.finetune`); with ``lora.rank > 0`` the
base is frozen and only adapters train (`model.lora`). What is SFT's own: chat rows
(`trainer.sft_data.ChatDataset`, packed or padded) and a loss that counts assistant
tokens only. Resume, checkpoints, metrics, clipping and the rest are the loop's.

Outputs in ``run.out_dir``: ``checkpoints/``, ``metrics.jsonl``, ``loss.png``,
``final/`` (merged weights + config.json, like pretraining's), ``tokenizer/``,
``adapter/`` (LoRA runs: ``adapter.safetensors`` + ``adapter_config.json``) and, last,
``DONE.json``.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from trainer.data import to_device, val_batches
from trainer.finetune import FinetuneConfig, FinetuneRecipe
from trainer.loop import Batch, run_main
from trainer.parallelize import DistEnv, autocast_context
from trainer.sft_data import ChatDataset, read_split, split_files

if TYPE_CHECKING:
    from model.tokenizer import Tokenizer

log = logging.getLogger("trainer")

SFTConfig = FinetuneConfig  # SFT needs nothing beyond the shared fine-tuning sections


@torch.no_grad()
def chat_val_loss(model: nn.Module, dataset: ChatDataset, cfg: SFTConfig, dist: DistEnv) -> float | None:
    """Mean loss per assistant token over the first `run.val_batches` val micro-batches of every rank."""
    model.eval()
    total = torch.zeros(2, device=dist.device)  # (summed loss, target tokens)
    for x, y, docs in cast(Any, val_batches)(cast(Any, dataset), cfg.data.micro_batch_size, cfg.run.val_batches,
                                             rank=dist.rank, world_size=dist.world_size):
        x, y = to_device(x, dist.device), to_device(y, dist.device)
        with autocast_context(dist, cfg.run):
            _, loss = model(x, y, doc_ids=None if docs is None else to_device(docs, dist.device))
        n = (y != -100).sum()
        total += torch.stack([loss.float() * n, n.float()])
    model.train()
    if dist.initialized:
        tdist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] > 0 else None


class SFTRecipe(FinetuneRecipe[SFTConfig]):
    """Chat rows, loss on assistant tokens (packed conversations kept apart by document ids)."""

    kind = "sft"
    config_type = SFTConfig

    def load_data(self, tokenizer: Tokenizer) -> ChatDataset:
        cfg = self.cfg
        train_set = ChatDataset(read_split(cfg.data.dir, "train"), tokenizer, cfg.data.seq_len,
                                packing=cfg.data.packing, bos=cfg.data.bos, name=f"{cfg.data.dir}/train")
        has_val = bool(split_files(cfg.data.dir, "val")) and cfg.run.val_batches > 0
        self.val_set = ChatDataset(read_split(cfg.data.dir, "val"), tokenizer, cfg.data.seq_len,
                                   packing=cfg.data.packing, bos=cfg.data.bos,
                                   name=f"{cfg.data.dir}/val") if has_val else None
        log.info("sft data: %d conversations in %d rows (%.0f%% full, %d dropped) | %.1f epochs",
                 len(train_set.examples), len(train_set), 100 * train_set.fill, train_set.dropped,
                 cfg.run.steps * cfg.rows_per_step / len(train_set))
        return train_set

    def step(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        x, y, docs = (None if t is None else to_device(t, self.dist.device) for t in batch)
        _, loss = self.parts.model(x, y, doc_ids=docs)
        return loss, {}

    def validate(self) -> dict[str, float] | None:
        if self.val_set is None:
            return None
        loss = chat_val_loss(self.parts.model, self.val_set, self.cfg, self.dist)
        return None if loss is None else {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, SFTRecipe, __doc__)


if __name__ == "__main__":
    sys.exit(main())
