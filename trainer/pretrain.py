"""Pretrain a Llama on token shards: the training loop, readable top to bottom.

    python -m trainer.pretrain --config configs/train/debug.toml data.train_dir=DIR/train run.out_dir=runs/x
    torchrun --standalone --nproc-per-node 8 -m trainer.pretrain --config configs/train/1b.toml ...

Overrides are dotted ``section.key=value`` pairs (see `trainer.config`). A run
directory that already holds checkpoints is resumed from the newest valid one
(corrupt ones are skipped with a warning): same data position, RNG, optimizer and
schedule, so the loss curve continues exactly (bitwise on CPU).

Outputs in ``run.out_dir``: ``checkpoints/step-%08d/``, ``metrics.jsonl``,
``loss.png``, ``final/`` (consolidated weights + config.json), ``train_config.json``
and, last, ``DONE.json`` (summary) -- the Prefect pretrain stage waits for it.

Only rank 0 logs and writes files (checkpoints and exports are collective).
Setting ``KILN_TRAIN_STOP_AFTER_STEP=k`` makes the run exit with code 75 right after
step k, as if killed: the tests use it to exercise resume.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from kiln.config import load_config, to_dict
from kiln.errors import KilnError
from model import count_params, mfu
from storage.atomic import atomic_write_text
from trainer.checkpoint import (
    export_final,
    full_state_dict,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    step_of,
)
from trainer.config import TrainConfig
from trainer.data import PackedTokenDataset, TokenLoader, val_batches
from trainer.metrics import MetricsLogger, peak_memory_gb, plot_loss_curve, truncate_after
from trainer.optim import build_optimizer
from trainer.parallelize import DistEnv, autocast_context, build_model, compute_dtype, init_distributed
from trainer.schedule import lr_at

log = logging.getLogger("trainer")

STOP_ENV = "KILN_TRAIN_STOP_AFTER_STEP"
EXIT_STOPPED = 75  # EX_TEMPFAIL: "try again" -- a rerun resumes


class StopRequested(Exception):
    """Raised after the step named by KILN_TRAIN_STOP_AFTER_STEP (simulated kill)."""


# -- setup --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m trainer.pretrain", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--config", help="TOML or JSON TrainConfig file (configs/train/*.toml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-3 run.steps=50")
    args = parser.parse_args(argv)
    overrides = [o.removeprefix("--") for o in args.overrides]
    return load_config(TrainConfig, args.config, overrides)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is at emit time (pytest and notebooks swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(rank: int) -> None:
    """Progress lines on stdout from rank 0; other ranks only warn, prefixed with their rank."""
    if not log.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def check_paths(cfg: TrainConfig, vocab_size: int) -> Path:
    if not cfg.run.out_dir:
        raise KilnError("train config: run.out_dir is empty; set run.out_dir=<run directory>")
    if not cfg.data.train_dir:
        raise KilnError("train config: data.train_dir is empty; set it to <tokens artifact>/train")
    for split in (cfg.data.train_dir, cfg.data.val_dir):
        for shard in Path(split).glob("*/manifest.json") if split else []:
            data_vocab = json.loads(shard.read_text()).get("vocab_size", 0)
            if data_vocab > vocab_size:
                raise KilnError(f"{shard}: token ids go up to {data_vocab - 1} but the model's vocab_size is "
                                f"{vocab_size}; set model.overrides.vocab_size to the tokenizer's model_vocab_size")
    return Path(cfg.run.out_dir)


def local_accum_steps(cfg: TrainConfig, dist: DistEnv) -> int:
    """Micro-steps per optimizer step on this rank (the config counts them over all ranks)."""
    if cfg.data.grad_accum_steps % dist.world_size:
        raise KilnError(f"train config: data.grad_accum_steps ({cfg.data.grad_accum_steps}) counts micro-batches "
                        f"over all ranks and must be a multiple of the world size ({dist.world_size})")
    return cfg.data.grad_accum_steps // dist.world_size


def all_reduce_mean(value: torch.Tensor, dist: DistEnv) -> torch.Tensor:
    if dist.initialized:
        value = value.clone()
        tdist.all_reduce(value)  # SUM: gloo has no AVG
        value /= dist.world_size
    return value


def grad_sync_context(model: torch.nn.Module, dist: DistEnv, *, last: bool) -> contextlib.AbstractContextManager:
    """DDP all-reduces gradients on every backward; only the last micro-step of a step needs it.

    (FSDP still reduce-scatters each micro-step: skipping it would keep unsharded
    gradients alive, which is the memory FSDP exists to save.)
    """
    if dist.mode == "ddp" and not last:
        return model.no_sync()  # type: ignore[operator]
    return contextlib.nullcontext()


def train_step(model: torch.nn.Module, raw: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], accum: int,
               dist: DistEnv, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over `accum` micro-batches (lr already set).

    Returns this rank's mean loss and the global grad norm as device tensors: nothing
    here waits for the device, so the CPU queues the next step while the GPU works.
    """
    loss_sum = torch.zeros((), device=dist.device)
    for micro in range(accum):
        x, y = next(batches)
        if dist.device.type == "cuda":  # pinned host memory lets the copy overlap compute
            x, y = x.pin_memory().to(dist.device, non_blocking=True), y.pin_memory().to(dist.device, non_blocking=True)
        with grad_sync_context(model, dist, last=micro == accum - 1), autocast_context(dist, cfg.run):
            _, loss = model(x, y)
        scaler.scale(loss / accum).backward()
        loss_sum += loss.detach()
    scaler.unscale_(optimizer)  # a no-op unless fp16 loss scaling is on
    grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.optim.grad_clip or math.inf)
    if hasattr(grad_norm, "full_tensor"):  # FSDP returns a replicated DTensor
        grad_norm = grad_norm.full_tensor()  # type: ignore[union-attr]
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / accum, grad_norm


# -- resume -------------------------------------------------------------------------------------
def find_resume_point(out_dir: Path, dist: DistEnv) -> Path | None:
    """Rank 0 picks the newest valid checkpoint (quarantining corrupt newer ones); all ranks agree."""
    choice: list[Any] = [None]
    if dist.is_main:
        path = latest_valid_checkpoint(out_dir)
        for newer in list_checkpoints(out_dir):
            if path is None or step_of(newer) > step_of(path):
                aside = newer.with_name(f"corrupt-{newer.name}")  # kept for inspection, never loaded
                shutil.rmtree(aside, ignore_errors=True)
                newer.rename(aside)
                log.warning("moved corrupt checkpoint %s aside to %s", newer, aside)
        choice[0] = str(path) if path else None
    if dist.initialized:
        tdist.broadcast_object_list(choice, src=0)
    return Path(choice[0]) if choice[0] else None


# -- evaluation ---------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: torch.nn.Module, val_set: PackedTokenDataset, cfg: TrainConfig, dist: DistEnv) -> float | None:
    """Mean loss over the first `run.val_batches` val micro-batches of every rank (same ones each time)."""
    model.eval()
    total = torch.zeros(2, device=dist.device)  # (sum of losses, batches)
    for x, y in val_batches(val_set, cfg.data.micro_batch_size, cfg.run.val_batches,
                            rank=dist.rank, world_size=dist.world_size):
        with autocast_context(dist, cfg.run):
            _, loss = model(x.to(dist.device), y.to(dist.device))
        total += torch.stack([loss.float(), torch.ones((), device=dist.device)])
    model.train()
    total = all_reduce_mean(total, dist)
    return float(total[0] / total[1]) if total[1] > 0 else None


# -- the run ------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) the configured pretraining; returns the DONE.json summary."""
    dist = init_distributed(cfg.run)
    setup_logging(dist.rank)
    try:
        return _train(cfg, dist)
    finally:
        if dist.initialized:
            tdist.destroy_process_group()


def _train(cfg: TrainConfig, dist: DistEnv) -> dict[str, Any]:
    model_cfg = cfg.model_config()
    out_dir = check_paths(cfg, model_cfg.vocab_size)
    seq_len, device = cfg.data.seq_len, dist.device
    accum = local_accum_steps(cfg, dist)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for whatever stays in fp32
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "train_config.json", json.dumps(to_dict(cfg), indent=2))

    # Model, optimizer, data.
    model, raw = build_model(model_cfg, cfg.run, dist)
    optimizer = build_optimizer(raw, cfg.optim)
    train_set = PackedTokenDataset(cfg.data.train_dir, seq_len)
    loader = TokenLoader(train_set, cfg.data.micro_batch_size, seed=cfg.run.seed, rank=dist.rank,
                         world_size=dist.world_size, num_workers=cfg.data.num_workers,
                         source_weights=cfg.data.source_weights)
    val_set = PackedTokenDataset(cfg.data.val_dir, seq_len) if cfg.data.val_dir and cfg.run.val_batches else None
    if val_set is not None and len(val_set) < cfg.data.micro_batch_size * dist.world_size:
        log.warning("%s: %d val sequences cannot fill one micro-batch per rank; validation is off",
                    cfg.data.val_dir, len(val_set))
    n_params = count_params(model_cfg)
    log.info("model %s: %.2fM params | %d rank(s), parallel=%s, %s on %s | %d tokens/step | train %d tokens",
             cfg.model.preset, n_params / 1e6, dist.world_size, dist.mode, compute_dtype(dist, cfg.run),
             device, cfg.tokens_per_step, train_set.n_tokens)

    # Resume.
    state: dict[str, Any] = {"step": 0, "tokens_seen": 0, "last_loss": None, "last_val_loss": None,
                             "best_val_loss": None, "elapsed_s": 0.0}
    resume = find_resume_point(out_dir, dist)
    if resume is not None:
        state = load_checkpoint(resume, model=model, raw=raw, optimizer=optimizer, dist=dist)
        loader.load_state_dict(state["data"])
        log.info("resumed from %s (step %d, %d tokens seen)", resume, state["step"], state["tokens_seen"])
    metrics_path = out_dir / "metrics.jsonl"
    if dist.is_main:
        truncate_after(metrics_path, state["step"])
    metrics = MetricsLogger(out_dir, enabled=dist.is_main, wandb=cfg.run.wandb, tensorboard=cfg.run.tensorboard,
                            run_config=to_dict(cfg))

    def checkpoint(val_loss: float | None) -> None:
        state["data"] = loader.state_dict()
        save_checkpoint(out_dir, state["step"], model=model, raw=raw, optimizer=optimizer, trainer_state=state,
                        cfg=cfg, model_cfg=model_cfg, dist=dist, val_loss=val_loss)
        if dist.is_main:
            prune_checkpoints(out_dir, cfg.checkpoint.keep_last, cfg.checkpoint.keep_best)

    def validate() -> float | None:
        if val_set is None:
            return None
        val_loss = evaluate(model, val_set, cfg, dist)
        if val_loss is not None:
            state["last_val_loss"] = val_loss
            if state["best_val_loss"] is None or val_loss < state["best_val_loss"]:
                state["best_val_loss"] = val_loss
            metrics.log({"kind": "val", "step": state["step"], "val_loss": val_loss,
                         "val_ppl": math.exp(min(val_loss, 50.0)), "tokens_seen": state["tokens_seen"],
                         "elapsed": state["elapsed_s"]})
            log.info("step %d | val loss %.4f | val ppl %.2f", state["step"], val_loss, math.exp(min(val_loss, 50)))
        return val_loss

    # Train.
    stop_after = int(os.environ.get(STOP_ENV, 0))
    use_scaler = device.type == "cuda" and compute_dtype(dist, cfg.run) == torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)  # fp16 needs loss scaling; bf16 does not
    session_start, elapsed_before = time.perf_counter(), state["elapsed_s"]
    t_log, tokens_at_log = time.perf_counter(), state["tokens_seen"]
    model.train()
    while state["step"] < cfg.run.steps:
        step = state["step"]
        lr = lr_at(step, cfg.schedule, cfg.optim, cfg.run.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, grad_norm = train_step(model, raw, optimizer, scaler, loader, accum, dist, cfg)
        state["step"] = step = step + 1
        state["tokens_seen"] += cfg.tokens_per_step
        state["elapsed_s"] = elapsed_before + time.perf_counter() - session_start

        if step % cfg.run.log_every == 0 or step == cfg.run.steps:
            loss_val = float(all_reduce_mean(loss, dist))  # waits for the device: only on log steps
            now = time.perf_counter()
            tokens_per_s = (state["tokens_seen"] - tokens_at_log) / max(now - t_log, 1e-9)
            t_log, tokens_at_log = now, state["tokens_seen"]
            state["last_loss"] = loss_val
            record = {"kind": "train", "step": step, "loss": loss_val, "lr": lr, "grad_norm": float(grad_norm),
                      "tokens_per_s": tokens_per_s,
                      "mfu": mfu(tokens_per_s / dist.world_size, model_cfg, seq_len,
                                 peak_flops=cfg.run.peak_tflops * 1e12),
                      "peak_mem_gb": peak_memory_gb(device), "tokens_seen": state["tokens_seen"],
                      "elapsed": state["elapsed_s"]}
            metrics.log(record)
            log.info("step %d/%d | loss %.4f | lr %.2e | grad %.3f | %.1fk tok/s | mfu %.1f%% | mem %.2f GB | %.1fs",
                     step, cfg.run.steps, loss_val, lr, record["grad_norm"], tokens_per_s / 1e3,
                     100 * record["mfu"], record["peak_mem_gb"], state["elapsed_s"])

        val_loss = None
        if cfg.run.val_every and step % cfg.run.val_every == 0 and step < cfg.run.steps:
            val_loss = validate()
        every = cfg.checkpoint.every_steps
        if every and step % every == 0 and step < cfg.run.steps:
            checkpoint(val_loss)
        if stop_after and step == stop_after:
            raise StopRequested(f"after step {step} because {STOP_ENV}={stop_after}")

    # Finish: last validation, last checkpoint, export, plot, summary.
    loader.close()
    if resume is None or step_of(resume) < cfg.run.steps:
        val_loss = validate()
        checkpoint(val_loss)
    return finish(cfg, model_cfg, out_dir, model, raw, dist, state, metrics, n_params)


def finish(cfg: TrainConfig, model_cfg: Any, out_dir: Path, model: torch.nn.Module, raw: Any, dist: DistEnv,
           state: dict[str, Any], metrics: MetricsLogger, n_params: int) -> dict[str, Any]:
    """Export consolidated weights, plot the loss curve and write DONE.json (rank 0) last."""
    weights = full_state_dict(model, raw, dist)  # collective under FSDP
    metrics.close()
    summary = {
        "steps": state["step"], "final_loss": state["last_loss"], "val_loss": state["last_val_loss"],
        "best_val_loss": state["best_val_loss"], "tokens_seen": state["tokens_seen"],
        "elapsed_s": round(state["elapsed_s"], 3), "params": n_params, "world_size": dist.world_size,
        "preset": cfg.model.preset, "final_dir": "final", "checkpoint": checkpoint_name(state["step"]),
    }
    if dist.is_main:
        export_final(weights, model_cfg, out_dir / "final", dtype=cfg.checkpoint.export_dtype,
                     extra={"step": state["step"], "tokens_seen": state["tokens_seen"]})
        plot_loss_curve(out_dir / "metrics.jsonl", out_dir / "loss.png")
        atomic_write_text(out_dir / "DONE.json", json.dumps(summary, indent=2))
        log.info("done: %d steps, loss %s, val loss %s, %.1fs -> %s", state["step"], state["last_loss"],
                 state["last_val_loss"], state["elapsed_s"], out_dir)
    dist.barrier()
    return summary


def checkpoint_name(step: int) -> str:
    return f"checkpoints/step-{step:08d}"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (0 ok, 2 config/data error, 75 stopped early)."""
    try:
        train(parse_args(argv))
    except KilnError as exc:
        setup_logging(int(os.environ.get("RANK", 0)))
        log.error("error: %s", exc)
        return 2
    except StopRequested as exc:
        log.warning("stopped: %s", exc)
        return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
