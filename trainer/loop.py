"""The one training loop: pretraining, SFT and DPO are recipes plugged into it.

    python -m trainer.pretrain --config configs/train/debug.toml run.out_dir=runs/x ...   # any recipe's main
    summary = train(cfg, PretrainRecipe)                                                    # from Python

A `Recipe` says only what differs between the three: how the model is built (fresh,
or a base model with adapters), where batches come from, the loss of one
micro-batch, how to validate and how to export ``final/``. Everything else lives here
once, so it behaves the same for all three: process group, resume from the newest
valid checkpoint (model, optimizer, RNG, loader position: bitwise on CPU),
gradient accumulation with DDP's `no_sync`, clipping (always exactly the parameters
that train), fp16 loss scaling, the lr schedule, ``metrics.jsonl`` + ``loss.png``,
checkpoints with pruning, ``KILN_TRAIN_STOP_AFTER_STEP``, and ``DONE.json``
(`trainer.summary`) written last.

Reproducible: the run's outputs split into content, a pure function of the config and
the data (``final/``, every checkpoint file but ``run.json``: two runs of one config, or a
run killed and resumed, write the same bytes), and `RUN_LOGS`, the records of how this
run went (wall times, tokens/s, host paths).

As in torchtitan's ``Trainer.train``, the loop body is short because each component
owns its cadence: `TrainLogger`, `Validator` and `Checkpointer` each look at the step
and decide whether to act. Only rank 0 logs and writes files; checkpoints, exports
and validation are collective.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from kiln.config import load_config, to_dict
from kiln.errors import KilnError
from model import Llama, ModelConfig, mfu
from model.lora import trainable_parameters
from storage.atomic import atomic_write_text
from trainer.checkpoint import (
    CHECKPOINTS,
    RUN_LOG,
    capture_checkpoint,
    checkpoint_path,
    find_resume_point,
    full_state_dict,
    load_checkpoint,
    prune_checkpoints,
    seed_all,
    step_of,
    write_checkpoint,
)
from trainer.config import CheckpointSection, OptimSection, RunSection, ScheduleSection
from trainer.data import TokenLoader
from trainer.lifeline import die_with_parent, hold_run_dir
from trainer.metrics import MetricsLogger, peak_memory_gb, plot_loss_curve, truncate_after
from trainer.optim import build_optimizer
from trainer.parallelize import DistEnv, autocast_context, compute_dtype, init_distributed, register_step_hooks
from trainer.save_thread import SaveThread
from trainer.schedule import lr_at
from trainer.staging import HostStager
from trainer.state import TrainState
from trainer.summary import DONE_FILE, TrainSummary

log = logging.getLogger("trainer")

RUN_LOGS = ("metrics.jsonl", "loss.png", DONE_FILE, "train_config.json", f"{CHECKPOINTS}/*/{RUN_LOG}",
            "tb/**", "wandb/**")
"""Glob patterns (relative to run.out_dir) of the run's logs: wall-clock timings, tokens/s and
host paths (metrics.jsonl, DONE.json's elapsed_s, train_config.json's paths, each checkpoint's
run.json, TensorBoard/W&B files), and loss.png, a picture of metrics.jsonl. Everything else
the run writes is content."""

STOP_ENV = "KILN_TRAIN_STOP_AFTER_STEP"
EXIT_STOPPED = 75  # EX_TEMPFAIL: "try again" -- a rerun resumes


class StopRequested(Exception):
    """Raised after the step named by KILN_TRAIN_STOP_AFTER_STEP (simulated kill)."""


# -- what a recipe plugs in -----------------------------------------------------------------------
class LoopData(Protocol):
    @property
    def seq_len(self) -> int: ...
    @property
    def micro_batch_size(self) -> int: ...
    @property
    def grad_accum_steps(self) -> int: ...


class LoopConfig(Protocol):
    """The config sections the loop reads; every recipe's config has them (plus its own)."""

    @property
    def data(self) -> LoopData: ...
    @property
    def optim(self) -> OptimSection: ...
    @property
    def schedule(self) -> ScheduleSection: ...
    @property
    def checkpoint(self) -> CheckpointSection: ...
    @property
    def run(self) -> RunSection: ...


C = TypeVar("C", bound=LoopConfig)
Batch = tuple[Any, ...]  # (inputs, ...) from the loader; inputs [rows, T] come first
StepFn = Callable[[Batch], tuple[Tensor, dict[str, Tensor]]]


@dataclass
class Parts:
    """What a recipe builds: the model as trained (maybe DDP/FSDP-wrapped), the Llama under it, the batches."""

    model: nn.Module
    raw: Llama
    model_cfg: ModelConfig
    loader: TokenLoader


class Recipe(ABC, Generic[C]):
    """What differs between pretraining, SFT and DPO; `Trainer` does the rest."""

    kind: ClassVar[str]
    config_type: ClassVar[type[Any]]

    def __init__(self, cfg: C, dist: DistEnv) -> None:
        self.cfg, self.dist = cfg, dist

    @abstractmethod
    def build(self) -> Parts:
        """Model (weights loaded or initialized) and batch source; called once, before resume."""

    def start(self, parts: Parts, out_dir: Path, *, resumed: bool) -> None:  # noqa: B027 -- optional hook
        """After resume, before the first step (DPO scores its reference model here)."""

    @abstractmethod
    def step(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward one micro-batch (the loop applies autocast): (loss to backpropagate, stats to log as means)."""

    @abstractmethod
    def validate(self) -> dict[str, float] | None:
        """Numbers of one validation pass (collective; must hold ``val_loss``), None without val data."""

    @abstractmethod
    def export(self, weights: dict[str, Tensor], out_dir: Path, state: TrainState) -> None:
        """Write ``out_dir/final`` from the consolidated weights (rank 0 only)."""

    def summary_fields(self) -> dict[str, Any]:
        """Recipe-specific `TrainSummary` fields (preset, lora_rank, adapter_dir)."""
        return {}


# -- helpers ----------------------------------------------------------------------------------------
def all_reduce_mean(value: Tensor, dist: DistEnv) -> Tensor:
    if dist.initialized:
        value = value.clone()
        tdist.all_reduce(value)  # SUM: gloo has no AVG
        value /= dist.world_size
    return value


def grad_sync_context(model: nn.Module, dist: DistEnv, *, last: bool) -> contextlib.AbstractContextManager:
    """DDP all-reduces gradients on every backward; only the last micro-step of a step needs it.

    (FSDP still reduce-scatters each micro-step: skipping it would keep unsharded
    gradients alive, which is the memory FSDP exists to save.)
    """
    if dist.mode == "ddp" and not last:
        return model.no_sync()  # type: ignore[operator]
    return contextlib.nullcontext()


def trainable(raw: nn.Module) -> list[nn.Parameter]:
    """The parameters that train: the ones clipped and counted (all of them, or LoRA's adapters)."""
    return [p for p in raw.parameters() if p.requires_grad]


def local_accum_steps(grad_accum_steps: int, dist: DistEnv) -> int:
    """Micro-steps per optimizer step on this rank (the config counts them over all ranks)."""
    if grad_accum_steps % dist.world_size:
        raise KilnError(f"train config: data.grad_accum_steps ({grad_accum_steps}) counts micro-batches "
                        f"over all ranks and must be a multiple of the world size ({dist.world_size})")
    return grad_accum_steps // dist.world_size


def optimizer_step(model: nn.Module, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, batches: Iterator[Batch], step_fn: StepFn, *, accum: int,
                   dist: DistEnv, run: RunSection, grad_clip: float) -> tuple[dict[str, Tensor], Tensor, int]:
    """One optimizer step over `accum` micro-batches (lr already set), `step_fn` forwarding each under autocast.

    Returns this rank's mean loss and stats, the global grad norm of `params` (as device
    tensors: nothing here waits for the device, so the CPU queues the next step while the
    GPU works) and the input positions consumed over all ranks.
    """
    totals: dict[str, Tensor] = {}
    positions = 0
    for micro in range(accum):
        batch = next(batches)
        positions += batch[0].numel()
        with grad_sync_context(model, dist, last=micro == accum - 1):
            with autocast_context(dist, run):  # forward only: backward runs in the forward's dtypes anyway
                loss, stats = step_fn(batch)
            scaler.scale(loss / accum).backward()
        for key, value in {"loss": loss, **stats}.items():
            value = value.detach().float()
            totals[key] = totals[key] + value if key in totals else value
    scaler.unscale_(optimizer)  # a no-op unless fp16 loss scaling is on
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or math.inf)
    if hasattr(grad_norm, "full_tensor"):  # FSDP returns a replicated DTensor
        grad_norm = grad_norm.full_tensor()  # type: ignore[union-attr]
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return {k: v / accum for k, v in totals.items()}, grad_norm, positions * dist.world_size


# -- components: each decides from the step whether to act -------------------------------------------
class Checkpointer:
    """Saves every `checkpoint.every_steps` (and at the end), prunes, and resumes from the newest valid one.

    A save copies the state into host buffers (`trainer.staging`) and, with
    ``checkpoint.async_save``, leaves serializing, fsync, rename and pruning to a
    background thread (`trainer.save_thread`): the loop waits only for the copy and for
    the previous save. Under FSDP that thread's ``torch.distributed.checkpoint`` calls
    are collective, so they get a gloo group of their own, apart from the training
    collectives. Each finished save becomes a ``"kind": "checkpoint"`` metrics record:
    ``stall_s`` (how long the loop was blocked), ``save_s`` and ``gb_per_s`` (the whole save).
    """

    def __init__(self, out_dir: Path, cfg: LoopConfig, parts: Parts, optimizer: torch.optim.Optimizer,
                 dist: DistEnv, on_record: Callable[[dict[str, Any]], None]) -> None:
        self.out_dir, self.cfg, self.parts, self.optimizer, self.dist = out_dir, cfg, parts, optimizer, dist
        self.on_record = on_record
        """Called with every finished save's record, whichever call noticed it finished (so none goes unlogged)."""
        self.resumed_from: Path | None = None
        background = cfg.checkpoint.async_save
        self.stager = HostStager(dist.device)
        self.thread = SaveThread(background=background)
        self.group = tdist.new_group(backend="gloo") if background and dist.mode == "fsdp" and dist.initialized \
            else None
        # In-place writes to the state wait for its copies in flight (on CUDA the copies overlap the next step).
        optimizer.register_step_pre_hook(lambda *_: self.stager.guard())
        self.reserved = not background  # a synchronous save allocates its buffers while the loop waits anyway
        self.records: list[dict[str, Any]] = []

    def resume(self) -> TrainState:
        """The state to continue from: a fresh one, or the newest valid checkpoint's (weights, RNG, loader too)."""
        self.resumed_from = find_resume_point(self.out_dir, self.dist)
        if self.resumed_from is None:
            return TrainState()
        raw_state = load_checkpoint(self.resumed_from, model=self.parts.model, raw=self.parts.raw,
                                    optimizer=self.optimizer, dist=self.dist)
        state = TrainState.from_dict(raw_state)
        self.parts.loader.load_state_dict(state.data)
        log.info("resumed from %s (step %d, %d tokens seen)", self.resumed_from, state.step, state.tokens_seen)
        return state

    def due(self, step: int) -> bool:
        every = self.cfg.checkpoint.every_steps
        return bool(every) and step % every == 0 and step < self.cfg.run.steps

    def finished_before(self) -> bool:
        """Resumed from the final checkpoint: a rerun of a finished run only exports again."""
        return self.resumed_from is not None and step_of(self.resumed_from) >= self.cfg.run.steps

    def after_step(self) -> None:
        """Each step: record the saves finished since (a failed save raises here). After the first step,
        when the optimizer state exists, the host buffers are allocated in the background."""
        if not self.reserved:
            self.reserved = True
            tree = self._state_tree()
            self.thread.submit("host buffers", lambda: self.stager.reserve(tree))
        self._take(self.thread.poll())

    def save(self, state: TrainState, val_loss: float | None) -> None:
        start = time.perf_counter()
        waited = self.thread.wait()  # one save in flight at a time: its buffers are about to be reused
        self._take(self.thread.poll())
        began = time.perf_counter()
        state.data = self.parts.loader.state_dict()
        job = capture_checkpoint(self.out_dir, state.step, model=self.parts.model, raw=self.parts.raw,
                                 optimizer=self.optimizer, trainer_state=state.content_dict(), cfg=self.cfg,
                                 model_cfg=self.parts.model_cfg, dist=self.dist, stager=self.stager,
                                 val_loss=val_loss, run_log=state.log_dict())
        stall = time.perf_counter() - start

        def write() -> dict[str, Any]:
            write_checkpoint(job, self.dist, self.group)
            saved = time.perf_counter() - began
            self.prune()
            background = self.cfg.checkpoint.async_save  # else this runs inside save(): all of it is stall
            gb = job.tensors.nbytes / 1e9 if job.tensors else 0.0
            return {"kind": "checkpoint", "step": job.step, "async": background,
                    "stall_s": stall if background else time.perf_counter() - start, "waited_s": waited,
                    "copy_s": job.tensors.ready_at - began if job.tensors else 0.0, "save_s": saved,
                    "gb": gb, "gb_per_s": gb / saved}

        self.thread.submit(job.final.name, write)

    def wait(self) -> None:
        """Until the save in flight is written and pruned (raising its error), and recorded."""
        self.thread.wait()
        self._take(self.thread.poll())

    def close(self) -> None:
        """At the end of `Trainer.train`, however it ends: let the save in flight finish (only logging its error
        when another is on its way out), record it (a run stopped while a save was being written still records
        it), then release the host buffers."""
        self.thread.close()
        self.stager.close()
        self._take(self.thread.poll())

    def prune(self) -> None:
        """Keep the newest `keep_last` (and the best): after every save, and once more at the end, so a
        run killed between its last save and that save's pruning keeps the same checkpoints as one never killed."""
        if self.dist.is_main:
            prune_checkpoints(self.out_dir, self.cfg.checkpoint.keep_last, self.cfg.checkpoint.keep_best)

    def summary(self) -> dict[str, Any]:
        """`TrainSummary`'s checkpoint figures over this session's saves (None without any)."""
        stalls = [r["stall_s"] for r in self.records]
        rates = [r["gb_per_s"] for r in self.records if r["gb"] > 0]
        return {"checkpoint_stall_s_max": round(max(stalls), 4) if stalls else None,
                "checkpoint_stall_s_mean": round(sum(stalls) / len(stalls), 4) if stalls else None,
                "checkpoint_gb_per_s": round(sum(rates) / len(rates), 4) if rates else None}

    def _state_tree(self) -> Any:
        """What `capture_checkpoint` will stage on this rank (references only: nothing is copied here)."""
        if self.dist.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_sd, optim_sd = get_state_dict(self.parts.model, self.optimizer)
            return {"model": model_sd, "optim": optim_sd}
        return {"model": self.parts.raw.state_dict(), "optim": self.optimizer.state_dict()} if self.dist.is_main \
            else {}

    def _take(self, records: list[dict[str, Any]]) -> None:
        """Every finished save's record passes here, from whichever call polled it: kept and handed on."""
        for record in records:
            self.records.append(record)
            self.on_record(record)


class Validator:
    """Runs the recipe's validation every `run.val_every` steps (and at the end) and tracks the best loss."""

    def __init__(self, fn: Callable[[], dict[str, float] | None], run: RunSection, metrics: MetricsLogger) -> None:
        self.fn, self.run_cfg, self.metrics = fn, run, metrics

    def due(self, step: int) -> bool:
        every = self.run_cfg.val_every
        return bool(every) and step % every == 0 and step < self.run_cfg.steps

    def __call__(self, state: TrainState) -> float | None:
        result = self.fn()
        if not result:
            return None
        state.record_val(result["val_loss"])
        self.metrics.log({"kind": "val", "step": state.step, **result, "tokens_seen": state.tokens_seen,
                          "elapsed": state.elapsed_s})
        log.info("step %d | %s", state.step, " | ".join(f"{k} {v:.4f}" for k, v in result.items()))
        return result["val_loss"]


class TrainLogger:
    """A metrics line every `run.log_every` steps (and the last): the only place the loop waits for the device."""

    def __init__(self, metrics: MetricsLogger, cfg: LoopConfig, model_cfg: ModelConfig, dist: DistEnv,
                 state: TrainState) -> None:
        self.metrics, self.cfg, self.model_cfg, self.dist = metrics, cfg, model_cfg, dist
        self.t_last, self.tokens_at_last = time.perf_counter(), state.tokens_seen

    def due(self, step: int) -> bool:
        return step % self.cfg.run.log_every == 0 or step == self.cfg.run.steps

    def __call__(self, state: TrainState, stats: dict[str, Tensor], grad_norm: Tensor, lr: float) -> None:
        numbers = {k: float(all_reduce_mean(v, self.dist)) for k, v in stats.items()}
        now = time.perf_counter()
        tokens_per_s = (state.tokens_seen - self.tokens_at_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.tokens_at_last = now, state.tokens_seen
        state.last_loss = numbers["loss"]
        run = self.cfg.run
        # run.peak_tflops is a GPU's peak; on CPU there is no known peak, so no MFU (None, not 0.0 %).
        utilization = (mfu(tokens_per_s / self.dist.world_size, self.model_cfg, self.cfg.data.seq_len,
                           peak_flops=run.peak_tflops * 1e12) if self.dist.device.type == "cuda" else None)
        record = {"kind": "train", "step": state.step, **numbers, "lr": lr, "grad_norm": float(grad_norm),
                  "tokens_per_s": tokens_per_s, "mfu": utilization,
                  "peak_mem_gb": peak_memory_gb(self.dist.device), "tokens_seen": state.tokens_seen,
                  "elapsed": state.elapsed_s}
        self.metrics.log(record)
        shown_mfu = "" if utilization is None else f" | mfu {100 * utilization:.1f}%"
        log.info("step %d/%d | %s | lr %.2e | grad %.3f | %.1fk tok/s%s | mem %.2f GB | %.1fs",
                 state.step, run.steps, " | ".join(f"{k} {v:.4f}" for k, v in numbers.items()), lr,
                 record["grad_norm"], tokens_per_s / 1e3, shown_mfu, record["peak_mem_gb"], state.elapsed_s)


# -- the loop ---------------------------------------------------------------------------------------
class Trainer:
    """Builds a recipe's run, resumes it, steps it to `run.steps` and writes its outputs."""

    def __init__(self, cfg: LoopConfig, recipe: Recipe[Any], dist: DistEnv) -> None:
        if not cfg.run.out_dir:
            raise KilnError("train config: run.out_dir is empty; set run.out_dir=<run directory>")
        self.cfg, self.recipe, self.dist = cfg, recipe, dist
        self.out_dir = Path(cfg.run.out_dir)
        self.accum = local_accum_steps(cfg.data.grad_accum_steps, dist)
        if dist.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for whatever stays in fp32
        if dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "train_config.json", json.dumps(to_dict(cfg), indent=2))
        seed_all(cfg.run.seed)  # before anything draws: weight init, dropout, LoRA init
        self.parts = recipe.build()
        self.optimizer = build_optimizer(self.parts.raw, cfg.optim)
        register_step_hooks(self.parts.model, self.optimizer, cfg.run, dist)
        self.params = trainable(self.parts.raw)
        n_trainable, n_total = trainable_parameters(self.parts.raw)
        log.info("%s: %.2fM params, %.2fM trainable | %d rank(s), parallel=%s, %s (%s) on %s, %s weights%s",
                 recipe.kind, n_total / 1e6, n_trainable / 1e6, dist.world_size, dist.mode,
                 compute_dtype(dist, cfg.run), cfg.run.precision, dist.device, cfg.run.param_dtype,
                 (", fused loss" if cfg.run.fused_loss else "") + (" (fp8 head)" if cfg.run.fp8_head else ""))
        self.checkpointer = Checkpointer(self.out_dir, cfg, self.parts, self.optimizer, dist,
                                         on_record=self.log_checkpoint)
        self.state = self.checkpointer.resume()
        recipe.start(self.parts, self.out_dir, resumed=self.checkpointer.resumed_from is not None)
        if dist.is_main:
            truncate_after(self.out_dir / "metrics.jsonl", self.state.step)
        self.metrics = MetricsLogger(self.out_dir, enabled=dist.is_main, wandb=cfg.run.wandb,
                                     tensorboard=cfg.run.tensorboard, run_config=to_dict(cfg))
        self.validator = Validator(recipe.validate, cfg.run, self.metrics)
        self.logger = TrainLogger(self.metrics, cfg, self.parts.model_cfg, dist, self.state)

    def train(self) -> TrainSummary:
        """Step until `run.steps`; then the last validation and checkpoint, the export and DONE.json."""
        cfg, state, dist = self.cfg, self.state, self.dist
        stop_after = int(os.environ.get(STOP_ENV, 0))
        # fp16 needs loss scaling; bf16 and fp32 do not.
        scaler = torch.amp.GradScaler(dist.device.type, enabled=compute_dtype(dist, cfg.run) == torch.float16
                                      and dist.device.type == "cuda")
        session_start, elapsed_before = time.perf_counter(), state.elapsed_s
        self.parts.model.train()
        try:
            while state.step < cfg.run.steps:
                lr = lr_at(state.step, cfg.schedule, cfg.optim, cfg.run.steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                stats, grad_norm, positions = optimizer_step(
                    self.parts.model, self.params, self.optimizer, scaler, self.parts.loader, self.recipe.step,
                    accum=self.accum, dist=dist, run=cfg.run, grad_clip=cfg.optim.grad_clip)
                state.step += 1
                state.tokens_seen += positions
                state.elapsed_s = elapsed_before + time.perf_counter() - session_start
                self.checkpointer.after_step()  # a failed background save raises here
                if self.logger.due(state.step):
                    self.logger(state, stats, grad_norm, lr)
                val_loss = self.validator(state) if self.validator.due(state.step) else None
                if self.checkpointer.due(state.step):
                    self.checkpointer.save(state, val_loss)
                if stop_after and state.step == stop_after:
                    raise StopRequested(f"after step {state.step} because {STOP_ENV}={stop_after}")
            self.parts.loader.close()
            if not self.checkpointer.finished_before():
                self.checkpointer.save(state, self.validator(state))
            self.checkpointer.wait()  # the final checkpoint is on disk before the export
            if self.checkpointer.finished_before():
                self.checkpointer.prune()
        finally:
            # a stopped or failed run still finishes (and records) the checkpoint it was writing
            self.checkpointer.close()
        return self.finish()

    def log_checkpoint(self, record: dict[str, Any]) -> None:
        """A finished save: a metrics record and a log line (saves finish only once training has begun)."""
        self.metrics.log(record)
        log.info("checkpoint step %d: loop waited %.3fs; saved %.2f GB in %.2fs (%.2f GB/s)%s", record["step"],
                 record["stall_s"], record["gb"], record["save_s"], record["gb_per_s"],
                 " in the background" if record["async"] else "")

    def finish(self) -> TrainSummary:
        """Export consolidated weights, plot the loss curve and write DONE.json (rank 0) last."""
        state, out_dir = self.state, self.out_dir
        weights = full_state_dict(self.parts.model, self.parts.raw, self.dist)  # collective under FSDP
        self.metrics.close()
        n_trainable, n_total = trainable_parameters(self.parts.raw)
        summary = TrainSummary(
            kind=self.recipe.kind, steps=state.step, tokens_seen=state.tokens_seen, final_loss=state.last_loss,
            val_loss=state.last_val_loss, best_val_loss=state.best_val_loss, elapsed_s=round(state.elapsed_s, 3),
            params=n_total, trainable_params=n_trainable, world_size=self.dist.world_size,
            precision=self.cfg.run.precision,
            checkpoint=str(checkpoint_path(out_dir, state.step).relative_to(out_dir)),
            **self.checkpointer.summary(), **self.recipe.summary_fields())
        if self.dist.is_main:
            self.recipe.export(weights, out_dir, state)
            plot_loss_curve(out_dir / "metrics.jsonl", out_dir / "loss.png")
            summary.write(out_dir)
            log.info("done: %d steps, loss %s, val loss %s, %.1fs -> %s", state.step, state.last_loss,
                     state.last_val_loss, state.elapsed_s, out_dir)
        self.dist.barrier()
        return summary


# -- entry points -----------------------------------------------------------------------------------
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


def train(cfg: LoopConfig, recipe: type[Recipe[Any]]) -> TrainSummary:
    """Run (or resume) `recipe` with `cfg` in this process (one rank of torchrun, or alone)."""
    dist = init_distributed(cfg.run)
    setup_logging(dist.rank)
    try:
        return Trainer(cfg, recipe(cfg, dist), dist).train()
    finally:
        if dist.initialized:
            tdist.destroy_process_group()


def parse_args(argv: list[str] | None, config_type: type[Any], prog: str, description: str) -> Any:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="TOML or JSON config file (configs/train/*.toml, configs/sft/*.toml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-3 run.steps=50")
    args = parser.parse_args(argv)
    return load_config(config_type, args.config, [o.removeprefix("--") for o in args.overrides])


def run_main(argv: list[str] | None, recipe: type[Recipe[Any]], module_doc: str | None) -> int:
    """The CLI of every recipe: 0 ok, 2 config/data error (one line), 75 stopped early (rerun resumes).

    Every rank dies with the process that launched it, and rank 0 holds the run directory
    for the whole run (`trainer.lifeline`): no orphaned or concurrent trainers.
    """
    die_with_parent()
    try:
        cfg = parse_args(argv, recipe.config_type, f"python -m trainer.{recipe.kind}",
                         (module_doc or "").split("\n")[0])
        rank0 = int(os.environ.get("RANK", 0)) == 0
        with hold_run_dir(cfg.run.out_dir) if rank0 and cfg.run.out_dir else contextlib.nullcontext():
            train(cfg, recipe)
    except KilnError as exc:
        setup_logging(int(os.environ.get("RANK", 0)))
        log.error("error: %s", exc)
        return 2
    except StopRequested as exc:
        log.warning("stopped: %s", exc)
        return EXIT_STOPPED
    return 0
