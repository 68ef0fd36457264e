"""Supervised fine-tuning (full or LoRA) on a chat artifact, plus the loop DPO shares.

    python -m trainer.sft --config configs/sft/debug.toml base.dir=<pretrain artifact> \\
        data.dir=<sft_data artifact> run.out_dir=runs/sft
    torchrun --standalone --nproc-per-node 8 -m trainer.sft --config configs/sft/1b.toml ...

The model starts from `base.dir`: a pretrain/SFT artifact or run directory (its
``final/``), a ``final/`` directory itself, or a Hugging Face Llama directory. With
``lora.rank > 0`` the base is frozen and only adapters train (`model.lora`).
Loss counts assistant tokens only (`trainer.sft_data`).

Everything around the step is the pretraining trainer's: process group and
parallelism (`trainer.parallelize`), AdamW groups (`trainer.optim`), the lr schedule,
atomic verified checkpoints with exact resume (model, optimizer, RNG and loader
position), ``metrics.jsonl`` + ``loss.png``, ``KILN_TRAIN_STOP_AFTER_STEP``.

Outputs in ``run.out_dir``: ``checkpoints/``, ``metrics.jsonl``, ``loss.png``,
``final/`` (merged weights + config.json, like pretraining's), ``tokenizer/``,
``adapter/`` (LoRA runs: ``adapter.safetensors`` + ``adapter_config.json``) and, last,
``DONE.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from kiln.chat import find_tokenizer_dir, model_dir
from kiln.config import load_config, runtime_field, to_dict
from kiln.errors import KilnError
from model import Llama, ModelConfig, mfu
from model.hf_interop import load_weights
from model.lora import DEFAULT_TARGETS, apply_lora, merge_lora_state_dict, reset_lora_parameters
from model.lora import trainable_parameters as count_trainable
from storage.atomic import atomic_write_text
from trainer.checkpoint import (
    export_final,
    full_state_dict,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    step_of,
)
from trainer.config import CheckpointSection, OptimSection, RunSection, ScheduleSection
from trainer.data import TokenLoader, val_batches
from trainer.metrics import MetricsLogger, peak_memory_gb, plot_loss_curve, truncate_after
from trainer.optim import build_optimizer
from trainer.parallelize import DistEnv, autocast_context, init_distributed, parallelize
from trainer.pretrain import (
    EXIT_STOPPED,
    STOP_ENV,
    StopRequested,
    all_reduce_mean,
    checkpoint_name,
    find_resume_point,
    grad_sync_context,
    setup_logging,
)
from trainer.schedule import lr_at
from trainer.sft_data import ChatDataset, chat_loader, read_split, split_files

log = logging.getLogger("trainer")


# -- config -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaseSection:
    dir: str = ""
    """Model to start from: an artifact/run dir holding ``final/``, a ``final/`` dir, or an HF Llama dir."""


@dataclass(frozen=True)
class ChatDataSection:
    dir: str = ""
    """Chat data artifact (``sft_data`` / ``dpo_data`` stage): ``train/`` and ``val/`` Parquet parts."""
    tokenizer_dir: str = ""
    """Tokenizer directory; empty = the one stored with the base model (``final/`` or ``tokenizer/``)."""
    seq_len: int = 512
    """Positions per row; longer conversations are cut at the end. At most the model's max_seq_len."""
    micro_batch_size: int = 8
    """Rows per forward/backward on one rank."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step over ALL ranks (as in pretraining: a multiple of the world size)."""
    packing: bool = True
    """Pack several conversations per row (attention kept apart by doc ids); false = one per row, padded."""
    bos: bool = False
    """Start each conversation with BOS (match how the base model's documents started)."""
    num_workers: int = runtime_field(0)
    """Background threads assembling batches."""

    def __post_init__(self) -> None:
        for name in ("seq_len", "micro_batch_size", "grad_accum_steps"):
            if getattr(self, name) < 1:
                raise KilnError(f"train config: data.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class LoRASection:
    rank: int = 0
    """Adapter rank; 0 = full fine-tuning (every weight trains)."""
    alpha: float = 16.0
    """Adapter output scale is alpha / rank (keeps the update size steady when the rank changes)."""
    dropout: float = 0.05
    """Dropout on the adapter's input (training only)."""
    targets: tuple[str, ...] = DEFAULT_TARGETS
    """Linear layers that get adapters: any of wq wk wv wo w1 w2 w3 output."""

    def __post_init__(self) -> None:
        if self.rank < 0 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise KilnError(f"train config: lora needs rank >= 0, alpha > 0, 0 <= dropout < 1; got {self}")


@dataclass(frozen=True)
class SFTConfig:
    """A fine-tuning run: `python -m trainer.sft --config cfg.toml key=value ...`.

    optim/schedule/checkpoint/run are the pretraining sections (`trainer.config`); give
    fine-tuning values explicitly (configs/sft/*.toml): e.g. lr 2e-5 full, 2e-4 LoRA.
    """

    base: BaseSection = field(default_factory=BaseSection)
    data: ChatDataSection = field(default_factory=ChatDataSection)
    lora: LoRASection = field(default_factory=LoRASection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        if self.schedule.warmup_steps and self.schedule.warmup_steps >= self.run.steps:
            raise KilnError(f"train config: schedule.warmup_steps ({self.schedule.warmup_steps}) "
                            f"must be < run.steps ({self.run.steps})")

    @property
    def rows_per_step(self) -> int:
        return self.data.micro_batch_size * self.data.grad_accum_steps


def parse_args(argv: list[str] | None, cls: type, prog: str) -> Any:
    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--config", help="TOML or JSON config file (configs/sft/*.toml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-4 run.steps=50")
    args = parser.parse_args(argv)
    return load_config(cls, args.config, [o.removeprefix("--") for o in args.overrides])


# -- base model ---------------------------------------------------------------------------------
def tokenizer_dir_for(cfg: SFTConfig) -> Path:
    """`data.tokenizer_dir`, else the tokenizer stored with the base model."""
    if cfg.data.tokenizer_dir:
        return Path(cfg.data.tokenizer_dir)
    return find_tokenizer_dir(cfg.base.dir)


def build_finetune_model(cfg: SFTConfig, dist: DistEnv) -> tuple[nn.Module, Llama, ModelConfig]:
    """The base model with adapters (if any), parallelized like pretraining, weights loaded.

    Built on the meta device as in `trainer.parallelize.build_model`; the base weights are
    then loaded into the materialized (or FSDP-sharded) parameters.
    """
    if not cfg.base.dir:
        raise KilnError("train config: base.dir is empty; point it at a pretrain artifact or an HF model dir")
    state, model_cfg = load_weights(model_dir(cfg.base.dir))
    if cfg.data.seq_len > model_cfg.max_seq_len:
        raise KilnError(f"train config: data.seq_len ({cfg.data.seq_len}) exceeds the base model's "
                        f"max_seq_len ({model_cfg.max_seq_len})")
    torch.manual_seed(cfg.run.seed)
    with torch.device("meta"):
        raw = Llama(model_cfg)
        if cfg.lora.rank:
            apply_lora(raw, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets)
    model = parallelize(raw, cfg.run, dist) if dist.mode == "fsdp" else raw
    raw.to_empty(device=dist.device)
    with torch.no_grad():
        raw.init_weights()  # RoPE tables; the weights are overwritten below
    reset_lora_parameters(raw)
    if dist.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, cast(Any, state), options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        missing, unexpected = raw.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith((".lora_A", ".lora_B"))]
        if missing or unexpected:
            raise KilnError(f"{cfg.base.dir}: weights do not fit its config: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}")
        model = parallelize(raw, cfg.run, dist)
    return model, raw, model_cfg


# -- the loop shared by SFT and DPO ------------------------------------------------------------------
StepFn = Callable[[Any], tuple[Tensor, dict[str, Tensor]]]
ValFn = Callable[[], dict[str, float] | None]


@dataclass
class FinetuneRun:
    """What one fine-tuning run holds while it trains."""

    cfg: SFTConfig
    dist: DistEnv
    out_dir: Path
    model: nn.Module
    raw: Llama
    model_cfg: ModelConfig
    optimizer: torch.optim.Optimizer
    loader: TokenLoader
    tokenizer_dir: Path
    kind: str = "sft"
    state: dict[str, Any] = field(default_factory=dict)
    metrics: MetricsLogger | None = None
    resumed_from: Path | None = None


def start_run(cfg: SFTConfig, dist: DistEnv, kind: str, loader_for: Callable[[], TokenLoader]) -> FinetuneRun:
    """Build model, optimizer and loader, then resume from the newest valid checkpoint if any."""
    if not cfg.run.out_dir:
        raise KilnError("train config: run.out_dir is empty; set run.out_dir=<run directory>")
    out_dir = Path(cfg.run.out_dir)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "train_config.json", json.dumps(to_dict(cfg), indent=2))
    model, raw, model_cfg = build_finetune_model(cfg, dist)
    run = FinetuneRun(cfg, dist, out_dir, model, raw, model_cfg, build_optimizer(raw, cfg.optim), loader_for(),
                      tokenizer_dir_for(cfg), kind)
    run.state = {"step": 0, "tokens_seen": 0, "last_loss": None, "last_val_loss": None, "best_val_loss": None,
                 "elapsed_s": 0.0}
    run.resumed_from = find_resume_point(out_dir, dist)
    if run.resumed_from is not None:
        run.state = load_checkpoint(run.resumed_from, model=model, raw=raw, optimizer=run.optimizer, dist=dist)
        run.loader.load_state_dict(run.state["data"])
        log.info("resumed from %s (step %d)", run.resumed_from, run.state["step"])
    if dist.is_main:
        truncate_after(out_dir / "metrics.jsonl", run.state["step"])
    run.metrics = MetricsLogger(out_dir, enabled=dist.is_main, wandb=cfg.run.wandb,
                                tensorboard=cfg.run.tensorboard, run_config=to_dict(cfg))
    trainable, total = count_trainable(raw)
    log.info("%s: %.2fM params, %.2fM trainable (%s) | %d rank(s), parallel=%s on %s", kind, total / 1e6,
             trainable / 1e6, f"LoRA r={cfg.lora.rank}" if cfg.lora.rank else "full", dist.world_size, dist.mode,
             dist.device)
    return run


def checkpoint(run: FinetuneRun, val_loss: float | None) -> None:
    run.state["data"] = run.loader.state_dict()
    save_checkpoint(run.out_dir, run.state["step"], model=run.model, raw=run.raw, optimizer=run.optimizer,
                    trainer_state=run.state, cfg=cast(Any, run.cfg), model_cfg=run.model_cfg, dist=run.dist,
                    val_loss=val_loss)
    if run.dist.is_main:
        prune_checkpoints(run.out_dir, run.cfg.checkpoint.keep_last, run.cfg.checkpoint.keep_best)


def validate(run: FinetuneRun, val_fn: ValFn) -> float | None:
    """Run `val_fn`, log its numbers and track the best val loss; returns the val loss."""
    result = val_fn()
    if not result:
        return None
    loss = result["val_loss"]
    run.state["last_val_loss"] = loss
    if run.state["best_val_loss"] is None or loss < run.state["best_val_loss"]:
        run.state["best_val_loss"] = loss
    assert run.metrics is not None
    run.metrics.log({"kind": "val", "step": run.state["step"], **result, "elapsed": run.state["elapsed_s"]})
    log.info("step %d | %s", run.state["step"], " | ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return loss


def optimizer_step(run: FinetuneRun, step_fn: StepFn, accum: int, scaler: torch.amp.GradScaler
                   ) -> tuple[dict[str, Tensor], Tensor, int]:
    """One optimizer step over `accum` micro-batches: (mean stats incl. loss, grad norm, positions seen)."""
    totals: dict[str, Tensor] = {}
    positions = 0
    for micro in range(accum):
        batch = next(run.loader)
        positions += batch[0].numel()
        with grad_sync_context(run.model, run.dist, last=micro == accum - 1):
            loss, stats = step_fn(batch)
            scaler.scale(loss / accum).backward()
        for key, value in {"loss": loss.detach(), **stats}.items():
            totals[key] = totals.get(key, 0) + value.detach().float() / accum
    scaler.unscale_(run.optimizer)
    params = [p for p in run.raw.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, run.cfg.optim.grad_clip or math.inf)
    scaler.step(run.optimizer)
    scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return totals, grad_norm, positions * run.dist.world_size


def train_loop(run: FinetuneRun, step_fn: StepFn, val_fn: ValFn) -> None:
    """Step until run.steps, logging, validating, checkpointing and honouring KILN_TRAIN_STOP_AFTER_STEP."""
    cfg, dist, state = run.cfg, run.dist, run.state
    accum = cfg.data.grad_accum_steps // dist.world_size
    if accum < 1 or cfg.data.grad_accum_steps % dist.world_size:
        raise KilnError(f"train config: data.grad_accum_steps ({cfg.data.grad_accum_steps}) must be a multiple "
                        f"of the world size ({dist.world_size})")
    stop_after = int(os.environ.get(STOP_ENV, 0))
    scaler = torch.amp.GradScaler(dist.device.type, enabled=dist.device.type == "cuda" and cfg.run.dtype == "float16")
    session_start, elapsed_before = time.perf_counter(), state["elapsed_s"]
    t_log, tokens_at_log = time.perf_counter(), state["tokens_seen"]
    run.model.train()
    while state["step"] < cfg.run.steps:
        lr = lr_at(state["step"], cfg.schedule, cfg.optim, cfg.run.steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        stats, grad_norm, positions = optimizer_step(run, step_fn, accum, scaler)
        state["step"] += 1
        state["tokens_seen"] += positions
        state["elapsed_s"] = elapsed_before + time.perf_counter() - session_start
        step = state["step"]
        if step % cfg.run.log_every == 0 or step == cfg.run.steps:
            now = time.perf_counter()
            tokens_per_s = (state["tokens_seen"] - tokens_at_log) / max(now - t_log, 1e-9)
            t_log, tokens_at_log = now, state["tokens_seen"]
            log_train(run, stats, grad_norm, lr, tokens_per_s)
        val_loss = None
        if cfg.run.val_every and step % cfg.run.val_every == 0 and step < cfg.run.steps:
            val_loss = validate(run, val_fn)
        if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0 and step < cfg.run.steps:
            checkpoint(run, val_loss)
        if stop_after and step == stop_after:
            raise StopRequested(f"stopped after step {step} because {STOP_ENV}={stop_after}")
    if run.resumed_from is None or step_of(run.resumed_from) < cfg.run.steps:
        checkpoint(run, validate(run, val_fn))


def log_train(run: FinetuneRun, stats: dict[str, Tensor], grad_norm: Tensor, lr: float, tokens_per_s: float) -> None:
    numbers = {k: float(all_reduce_mean(v, run.dist)) for k, v in stats.items()}
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a replicated DTensor
        grad_norm = grad_norm.full_tensor()  # type: ignore[union-attr]
    run.state["last_loss"] = numbers["loss"]
    record = {"kind": "train", "step": run.state["step"], **numbers, "lr": lr, "grad_norm": float(grad_norm),
              "tokens_per_s": tokens_per_s,
              "mfu": mfu(tokens_per_s / run.dist.world_size, run.model_cfg, run.cfg.data.seq_len,
                         peak_flops=run.cfg.run.peak_tflops * 1e12),
              "peak_mem_gb": peak_memory_gb(run.dist.device), "tokens_seen": run.state["tokens_seen"],
              "elapsed": run.state["elapsed_s"]}
    assert run.metrics is not None
    run.metrics.log(record)
    log.info("step %d/%d | %s | lr %.2e | grad %.3f | %.1fk tok/s | %.1fs", run.state["step"], run.cfg.run.steps,
             " | ".join(f"{k} {v:.4f}" for k, v in numbers.items()), lr, record["grad_norm"], tokens_per_s / 1e3,
             run.state["elapsed_s"])


def finish_run(run: FinetuneRun) -> dict[str, Any]:
    """Merge adapters, export ``final/`` (+ tokenizer, adapter), plot, and write DONE.json last."""
    weights = full_state_dict(run.model, run.raw, run.dist)  # collective under FSDP
    assert run.metrics is not None
    run.metrics.close()
    cfg, state = run.cfg, run.state
    trainable, total = count_trainable(run.raw)
    summary = {"kind": run.kind, "steps": state["step"], "final_loss": state["last_loss"],
               "val_loss": state["last_val_loss"], "best_val_loss": state["best_val_loss"],
               "tokens_seen": state["tokens_seen"], "elapsed_s": round(state["elapsed_s"], 3), "params": total,
               "trainable_params": trainable, "lora_rank": cfg.lora.rank, "world_size": run.dist.world_size,
               "final_dir": "final", "adapter_dir": "adapter" if cfg.lora.rank else None,
               "checkpoint": checkpoint_name(state["step"])}
    if run.dist.is_main:
        if cfg.lora.rank:
            save_adapter(weights, cfg.lora, run.out_dir / "adapter")
            weights = merge_lora_state_dict(weights, cfg.lora.alpha / cfg.lora.rank)
        export_final(weights, run.model_cfg, run.out_dir / "final", dtype=cfg.checkpoint.export_dtype,
                     extra={"step": state["step"], "kind": run.kind})
        copy_tokenizer(run.tokenizer_dir, run.out_dir / "tokenizer")
        plot_loss_curve(run.out_dir / "metrics.jsonl", run.out_dir / "loss.png")
        atomic_write_text(run.out_dir / "DONE.json", json.dumps(summary, indent=2))
        log.info("done: %d steps, loss %s, val loss %s -> %s", state["step"], state["last_loss"],
                 state["last_val_loss"], run.out_dir)
    run.dist.barrier()
    return summary


def save_adapter(weights: dict[str, Tensor], lora: LoRASection, out: Path) -> None:
    """Adapters alone (small enough to share), with the settings needed to apply them again."""
    adapters = {k: v.contiguous() for k, v in weights.items() if k.endswith((".lora_A", ".lora_B"))}
    out.mkdir(parents=True, exist_ok=True)
    try:
        from safetensors.torch import save_file

        save_file(adapters, str(out / "adapter.safetensors"))
    except ImportError:
        torch.save(adapters, out / "adapter.pt")
    atomic_write_text(out / "adapter_config.json", json.dumps(dataclasses.asdict(lora), indent=2))


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Keep the tokenizer beside the weights so `kiln chat <run>` needs nothing else."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.model", "tokenizer_meta.json", "tokenizer.vocab"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


# -- SFT --------------------------------------------------------------------------------------------
@torch.no_grad()
def chat_val_loss(model: nn.Module, dataset: ChatDataset, cfg: SFTConfig, dist: DistEnv) -> float | None:
    """Mean loss per assistant token over the first `run.val_batches` val micro-batches of every rank."""
    model.eval()
    total = torch.zeros(2, device=dist.device)  # (summed loss, target tokens)
    for x, y, docs in cast(Any, val_batches)(cast(Any, dataset), cfg.data.micro_batch_size, cfg.run.val_batches,
                                  rank=dist.rank, world_size=dist.world_size):
        x, y = x.to(dist.device), y.to(dist.device)
        with autocast_context(dist, cfg.run):
            _, loss = model(x, y, doc_ids=None if docs is None else docs.to(dist.device))
        n = (y != -100).sum()
        total += torch.stack([loss.float() * n, n.float()])
    model.train()
    if dist.initialized:
        tdist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] > 0 else None


def _train(cfg: SFTConfig, dist: DistEnv) -> dict[str, Any]:
    from kiln.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(tokenizer_dir_for(cfg))
    train_set = ChatDataset(read_split(cfg.data.dir, "train"), tokenizer, cfg.data.seq_len,
                            packing=cfg.data.packing, bos=cfg.data.bos, name=f"{cfg.data.dir}/train")
    has_val = bool(split_files(cfg.data.dir, "val")) and cfg.run.val_batches > 0
    val_set = ChatDataset(read_split(cfg.data.dir, "val"), tokenizer, cfg.data.seq_len, packing=cfg.data.packing,
                          bos=cfg.data.bos, name=f"{cfg.data.dir}/val") if has_val else None
    run = start_run(cfg, dist, "sft", lambda: chat_loader(
        train_set, cfg.data.micro_batch_size, seed=cfg.run.seed, rank=dist.rank, world_size=dist.world_size,
        num_workers=cfg.data.num_workers))
    if tokenizer.vocab_size > run.model_cfg.vocab_size:
        raise KilnError(f"tokenizer has {tokenizer.vocab_size} ids but the base model's vocab_size is "
                        f"{run.model_cfg.vocab_size}; use the tokenizer the base model was trained with")
    log.info("sft data: %d conversations in %d rows (%.0f%% full, %d dropped) | %.1f epochs",
             len(train_set.examples), len(train_set), 100 * train_set.fill, train_set.dropped,
             cfg.run.steps * cfg.rows_per_step / len(train_set))

    def step_fn(batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        x, y, docs = (None if t is None else t.to(dist.device) for t in batch)
        with autocast_context(dist, cfg.run):
            _, loss = run.model(x, y, doc_ids=docs)
        return loss, {}

    def val_fn() -> dict[str, float] | None:
        loss = chat_val_loss(run.model, val_set, cfg, dist) if val_set is not None else None
        return None if loss is None else {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}

    train_loop(run, step_fn, val_fn)
    return finish_run(run)


def train(cfg: SFTConfig, body: Callable[[Any, DistEnv], dict[str, Any]] = _train) -> dict[str, Any]:
    """Run (or resume) a fine-tuning run; returns the DONE.json summary."""
    dist = init_distributed(cfg.run)
    setup_logging(dist.rank)
    try:
        return body(cfg, dist)
    finally:
        if dist.initialized:
            tdist.destroy_process_group()


def run_main(argv: list[str] | None, cls: type, prog: str, body: Callable[[Any, DistEnv], dict[str, Any]]) -> int:
    """CLI wrapper shared with DPO: 0 ok, 2 config/data error, 75 stopped early (as trainer.pretrain)."""
    try:
        train(parse_args(argv, cls, prog), body)
    except KilnError as exc:
        setup_logging(int(os.environ.get("RANK", 0)))
        log.error("error: %s", exc)
        return 2
    except StopRequested as exc:
        log.warning("%s", exc)
        return EXIT_STOPPED
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, SFTConfig, "python -m trainer.sft", _train)


if __name__ == "__main__":
    sys.exit(main())
