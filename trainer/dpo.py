"""Direct Preference Optimization (Rafailov et al., 2023) on a preference artifact.

    python -m trainer.dpo --config configs/sft/dpo_debug.toml base.dir=<sft artifact> \\
        data.dir=<dpo_data artifact> run.out_dir=runs/dpo

For a prompt x with a chosen reply c and a rejected reply r, the loss is

    -log σ(β · ((log π(c|x) − log π(r|x)) − (log π_ref(c|x) − log π_ref(r|x))))

with sequence log-probs summed over the reply's tokens only (its content and
``<|im_end|>``; `trainer.sft_data.PreferenceDataset`). The reference is the starting
model; its log-probs are computed once before the first step and stored in
``<out_dir>/reference_logps.pt``, so no second model is kept in memory and a resumed
run reuses them (the weights have moved on by then). ``dpo.label_smoothing`` > 0
gives the conservative DPO variant (assumes that share of labels are flipped).

Logged per step: loss, reward margin β·(Δπ − Δref), reward accuracy (share of pairs
with a positive margin), chosen/rejected rewards. Model building (full or LoRA) and
the export are `trainer.finetune`'s, shared with SFT; the loop, checkpoints, resume
and metrics are `trainer.loop`'s, shared with every recipe.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.errors import KilnError
from storage.atomic import atomic_path
from trainer.checkpoint import save_pt
from trainer.data import to_device
from trainer.finetune import FinetuneConfig, FinetuneRecipe
from trainer.loop import Batch, Parts, run_main
from trainer.parallelize import DistEnv, autocast_context
from trainer.sft_data import PreferenceDataset, read_split, split_files

if TYPE_CHECKING:
    from model.tokenizer import Tokenizer

log = logging.getLogger("trainer")
REFERENCE_FILE = "reference_logps.pt"


@dataclass(frozen=True)
class DPOSection:
    beta: float = 0.1
    """Strength of the KL anchor to the reference: small β lets the policy move further."""
    label_smoothing: float = 0.0
    """Conservative DPO: assumed share of wrongly labelled pairs (0 = plain DPO)."""

    def __post_init__(self) -> None:
        if self.beta <= 0 or not 0 <= self.label_smoothing < 0.5:
            raise KilnError(f"train config: dpo needs beta > 0 and 0 <= label_smoothing < 0.5, got {self}")


@dataclass(frozen=True)
class DPOConfig(FinetuneConfig):
    """The fine-tuning sections (base, data, lora, optim, schedule, checkpoint, run) plus `dpo`."""

    dpo: DPOSection = field(default_factory=DPOSection)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.run.fp8_head:  # it changes the artifact key, so it must not be accepted and then do nothing
            raise KilnError("train config: run.fp8_head works inside the fused loss, which DPO does not use (it "
                            "scores whole sequences from full logits); set run.fp8_head=false")


def sequence_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """Summed log-probabilities of the labelled targets of each row: [rows, T, V], [rows, T] -> [rows]."""
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="none")
    return -nll.view(targets.shape).sum(-1)


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float, label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean DPO loss over pairs and the reward statistics to log."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    losses = -F.logsigmoid(margin) * (1 - label_smoothing) - F.logsigmoid(-margin) * label_smoothing
    stats = {"reward_margin": margin.mean(), "reward_accuracy": (margin > 0).float().mean(),
             "chosen_reward": chosen_reward.mean(), "rejected_reward": rejected_reward.mean()}
    return losses.mean(), {k: v.detach() for k, v in stats.items()}


def pair_logps(model: nn.Module, batch: Any, cfg: DPOConfig, dist: DistEnv) -> tuple[Tensor, Tensor, Tensor]:
    """(chosen log-probs [B], rejected log-probs [B], pair indices [B]) of a PreferenceDataset batch."""
    x, y, index = batch
    with autocast_context(dist, cfg.run):
        logits, _ = model(to_device(x, dist.device))
    logps = sequence_logps(logits, to_device(y, dist.device))
    n = index.shape[0]
    return logps[:n], logps[n:], index


@torch.no_grad()
def reference_logps(model: nn.Module, dataset: PreferenceDataset, cfg: DPOConfig, dist: DistEnv) -> Tensor:
    """[n_pairs, 2] log-probs (chosen, rejected) of the starting model; ranks split the pairs."""
    model.eval()
    out = torch.zeros(len(dataset), 2, device=dist.device, dtype=torch.float64)
    mine = list(range(dist.rank, len(dataset), dist.world_size))
    step = cfg.data.micro_batch_size
    for start in range(0, len(mine), step):
        chosen, rejected, index = pair_logps(model, dataset.batch(mine[start:start + step]), cfg, dist)
        out[index.to(dist.device)] = torch.stack([chosen, rejected], dim=1).double()
    if dist.initialized:
        tdist.all_reduce(out)  # each pair was filled by exactly one rank, zeros elsewhere
    model.train()
    return out.float()


def load_or_compute_reference(model: nn.Module, sets: dict[str, PreferenceDataset], cfg: DPOConfig,
                              dist: DistEnv, path: Path, *, resumed: bool) -> dict[str, Tensor]:
    """Reference log-probs per split: read from `path` when resuming, else computed now and saved.

    A fresh run always recomputes: a file without a checkpoint may belong to another base model.
    """
    if resumed:
        if not path.is_file():
            raise KilnError(f"{path}: missing, but the run resumes from a checkpoint; use a fresh run.out_dir")
        saved = torch.load(path, map_location=dist.device, weights_only=True)
        if not all(k in saved and len(saved[k]) == len(ds) for k, ds in sets.items()):
            raise KilnError(f"{path}: reference log-probs do not match this data; use a fresh run.out_dir")
        return saved
    ref = {name: reference_logps(model, ds, cfg, dist) for name, ds in sets.items()}
    if dist.is_main:
        with atomic_path(path) as tmp:
            save_pt({k: v.cpu() for k, v in ref.items()}, tmp)  # not torch.save(tmp): it names records after tmp
    dist.barrier()
    return ref


@torch.no_grad()
def dpo_val(model: nn.Module, dataset: PreferenceDataset, ref: Tensor, cfg: DPOConfig,
            dist: DistEnv) -> dict[str, float]:
    """DPO loss, margin and accuracy over up to `run.val_batches` micro-batches of val pairs per rank."""
    model.eval()
    totals = torch.zeros(4, device=dist.device)  # loss, margin, accuracy (summed over pairs), pairs
    mine = list(range(dist.rank, len(dataset), dist.world_size))
    step = cfg.data.micro_batch_size
    for start in range(0, min(len(mine), step * cfg.run.val_batches), step):
        chosen, rejected, index = pair_logps(model, dataset.batch(mine[start:start + step]), cfg, dist)
        index = index.to(dist.device)
        loss, stats = dpo_loss(chosen, rejected, ref[index, 0], ref[index, 1], cfg.dpo.beta, cfg.dpo.label_smoothing)
        n = float(len(index))
        totals += torch.tensor([loss * n, stats["reward_margin"] * n, stats["reward_accuracy"] * n, n],
                               device=dist.device)
    model.train()
    if dist.initialized:
        tdist.all_reduce(totals)
    pairs = max(float(totals[3]), 1.0)
    return {"val_loss": float(totals[0]) / pairs, "val_reward_margin": float(totals[1]) / pairs,
            "val_reward_accuracy": float(totals[2]) / pairs}


class DPORecipe(FinetuneRecipe[DPOConfig]):
    """Preference pairs, the DPO loss against the starting model's stored log-probs."""

    kind = "dpo"
    config_type = DPOConfig

    def load_data(self, tokenizer: Tokenizer) -> PreferenceDataset:
        cfg = self.cfg
        self.sets = {"train": PreferenceDataset(read_split(cfg.data.dir, "train"), tokenizer, cfg.data.seq_len,
                                                bos=cfg.data.bos, name=f"{cfg.data.dir}/train")}
        if split_files(cfg.data.dir, "val") and cfg.run.val_batches:
            self.sets["val"] = PreferenceDataset(read_split(cfg.data.dir, "val"), tokenizer, cfg.data.seq_len,
                                                 bos=cfg.data.bos, name=f"{cfg.data.dir}/val")
        log.info("dpo data: %d pairs (%d dropped), beta %.3g", len(self.sets["train"]), self.sets["train"].dropped,
                 cfg.dpo.beta)
        return self.sets["train"]

    def start(self, parts: Parts, out_dir: Path, *, resumed: bool) -> None:
        self.ref = load_or_compute_reference(parts.model, self.sets, self.cfg, self.dist, out_dir / REFERENCE_FILE,
                                             resumed=resumed)

    def step(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        chosen, rejected, index = pair_logps(self.parts.model, batch, self.cfg, self.dist)
        index = index.to(self.dist.device)
        ref = self.ref["train"]
        return dpo_loss(chosen, rejected, ref[index, 0], ref[index, 1], self.cfg.dpo.beta,
                        self.cfg.dpo.label_smoothing)

    def validate(self) -> dict[str, float] | None:
        if "val" not in self.sets:
            return None
        return dpo_val(self.parts.model, self.sets["val"], self.ref["val"], self.cfg, self.dist)


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, DPORecipe, __doc__)


if __name__ == "__main__":
    sys.exit(main())
