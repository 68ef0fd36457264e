"""Pretrain stage: token shards + tokenizer → a trained model, by launching the trainer as a subprocess.

    ref = pretrain(tokens_ref, tokenizer_ref, PretrainConfig(), store)
    # <ref>/final/{model.safetensors|model.pt, config.json, tokenizer.model, tokenizer_meta.json, generation.json}
    # <ref>/{metrics.jsonl, loss.png, DONE.json, train.log, train_config.json, checkpoints/step-%08d/}

Training runs in its own process (``python -m trainer.pretrain``, or ``torchrun
--standalone --nproc-per-node N -m trainer.pretrain`` for several devices): the
trainer imports neither Prefect nor Dask and runs unchanged on a GPU node. This
stage writes the trainer's config (data paths from the tokens artifact, vocab size
from the tokenizer, ``run.out_dir`` = the build directory), streams the trainer's
output lines to the Prefect logger (and to ``train.log``) and turns a failure into a
`KilnError` carrying the trainer's last lines.

The build directory is the store's partial directory, which survives a failure: a
rerun of the stage relaunches the trainer in the same directory, and the trainer
resumes from its newest valid checkpoint. After success the artifact keeps only the
newest `keep_checkpoints` checkpoints (the final weights are in ``final/``).

Launcher: with ``nproc_per_node = 1`` and ``launcher = "auto"`` the trainer starts as
plain ``python -m``. torchrun's agent imports torch once more and runs a rendezvous
before starting the worker: measured on a loaded 2-core CPU box, a 1-step debug run
took 9.8-14.9 s with python and 15.6-21.0 s with torchrun (~6 s more), for nothing
when there is one process.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kiln.config import runtime_field, to_dict
from kiln.errors import KilnError
from kiln.tokenizer import META_FILE, MODEL_FILE, VOCAB_FILE, Tokenizer
from storage.atomic import atomic_write_text
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from storage.token_shards import list_shards
from tasks.stage import Stage, reported
from trainer.checkpoint import CHECKPOINTS, list_checkpoints
from trainer.config import (
    CheckpointSection,
    DataSection,
    ModelSection,
    OptimSection,
    RunSection,
    ScheduleSection,
    TrainConfig,
)

STAGE = "pretrain"
REPO_ROOT = Path(__file__).resolve().parents[1]
TAIL_LINES = 15
log = logging.getLogger("kiln.pretrain")


@dataclass(frozen=True)
class PretrainConfig:
    """The trainer's config sections (``[pretrain.optim]`` etc.) minus paths, plus how to launch it.

    Paths come from the input artifacts and the store: leave ``data.train_dir``,
    ``data.val_dir`` and ``run.out_dir`` empty. ``model.overrides.vocab_size`` is set
    from the tokenizer's `model_vocab_size`.
    """

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    run: RunSection = field(default_factory=RunSection)
    nproc_per_node: int = runtime_field(1)
    """Trainer processes (one per GPU). Runtime-only: the global batch is fixed by the data
    section whatever the count (see trainer.config), so the artifact does not depend on it."""
    launcher: Literal["auto", "torchrun", "python"] = runtime_field("auto")
    """auto = plain ``python -m trainer.pretrain`` for one process, torchrun for several."""
    keep_checkpoints: int = 1
    """Newest checkpoints kept in the finished artifact (for continued training); 0 keeps none."""

    def __post_init__(self) -> None:
        for key, value in (("data.train_dir", self.data.train_dir), ("data.val_dir", self.data.val_dir),
                           ("run.out_dir", self.run.out_dir)):
            if value:
                raise KilnError(f"pretrain.{key}: set by the stage from its artifacts; remove it from the config")
        if "vocab_size" in self.model.overrides:
            raise KilnError("pretrain.model.overrides.vocab_size: set by the stage from the tokenizer's "
                            "model_vocab_size; remove it from the config")
        if self.nproc_per_node < 1:
            raise KilnError(f"pretrain.nproc_per_node must be >= 1, got {self.nproc_per_node}")
        if self.launcher == "python" and self.nproc_per_node > 1:
            raise KilnError("pretrain.launcher='python' starts one process; use 'torchrun' for nproc_per_node > 1")
        if self.keep_checkpoints < 0:
            raise KilnError(f"pretrain.keep_checkpoints must be >= 0, got {self.keep_checkpoints}")
        self.train_config()  # cross-section checks (seq_len vs the model's max_seq_len, warmup vs steps)

    def train_config(self, *, train_dir: str = "", val_dir: str = "", out_dir: str = "",
                     vocab_size: int | None = None) -> TrainConfig:
        """The trainer's TrainConfig with the stage's paths and the tokenizer's vocab filled in."""
        cfg = TrainConfig(model=self.model, optim=self.optim, schedule=self.schedule, checkpoint=self.checkpoint,
                          data=dataclasses.replace(self.data, train_dir=train_dir, val_dir=val_dir),
                          run=dataclasses.replace(self.run, out_dir=out_dir))
        return cfg.with_vocab_size(vocab_size) if vocab_size is not None else cfg


PRETRAIN = Stage(STAGE, "1", PretrainConfig, inputs=("tokens", "tokenizer"))


def pretrain(tokens: ArtifactRef, tokenizer: ArtifactRef, cfg: PretrainConfig, store: ArtifactStore) -> ArtifactRef:
    """Train a model on a pretokenized artifact; rerunning after a failure resumes from its checkpoint."""
    return PRETRAIN.produce(store, cfg, {"tokens": tokens, "tokenizer": tokenizer},
                            lambda build: _train_into(build, tokens, tokenizer, cfg))


@PRETRAIN.task
def pretrain_task(tokens: ArtifactRef, tokenizer: ArtifactRef, cfg: PretrainConfig, store_root: str) -> ArtifactRef:
    """Prefect wrapper: cached by artifact key; no retries (a rerun resumes from the checkpoint anyway)."""
    return reported(STAGE, pretrain(tokens, tokenizer, cfg, open_store(store_root)))


def _train_into(build: Build, tokens: ArtifactRef, tokenizer: ArtifactRef, cfg: PretrainConfig) -> None:
    tok = Tokenizer.load(tokenizer.path)
    train_dir, val_dir = tokens.path / "train", tokens.path / "val"
    has_val = val_dir.is_dir() and bool(list_shards(val_dir))
    train_cfg = cfg.train_config(train_dir=str(train_dir), val_dir=str(val_dir) if has_val else "",
                                 out_dir=str(build.dir), vocab_size=tok.model_vocab_size)
    config_path = build.dir / "train_config.json"
    atomic_write_text(config_path, json.dumps(to_dict(train_cfg), indent=2))
    resumed = bool(list_checkpoints(build.dir))
    run_trainer(launch_command(cfg, config_path), build.dir / "train.log")
    done = json.loads((build.dir / "DONE.json").read_text())
    _finish_artifact(build, tokenizer, tokens, cfg)
    build.counts.update({k: done[k] for k in ("steps", "tokens_seen", "final_loss", "val_loss", "params")})
    build.extra["training"] = {"resumed": resumed, "elapsed_s": done["elapsed_s"], "world_size": done["world_size"]}


def launch_command(cfg: PretrainConfig, config_path: Path) -> list[str]:
    """``python -m trainer.pretrain`` or torchrun around it, both from this interpreter's environment."""
    use_torchrun = cfg.launcher == "torchrun" or (cfg.launcher == "auto" and cfg.nproc_per_node > 1)
    trainer = ["-m", "trainer.pretrain", "--config", str(config_path)]
    if not use_torchrun:
        return [sys.executable, *trainer]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={cfg.nproc_per_node}", *trainer]


def _logger() -> Any:
    """Prefect's run logger inside a flow/task run (shows in the UI), else plain logging."""
    try:
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            return get_run_logger()
        except MissingContextError:
            return log
    except ImportError:
        return log


def run_trainer(cmd: list[str], log_path: Path) -> None:
    """Run the trainer, streaming its output to the logger and `log_path`; KilnError on a non-zero exit."""
    logger = _logger()
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    reason = ""
    logger.info("launching: %s", " ".join(cmd))
    with open(log_path, "a", encoding="utf-8") as log_file, subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    ) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                log_file.write(line + "\n")
                tail.append(line)
                if _REASON.match(line) and not reason.startswith(("error:", "stopped:")):
                    reason = line.split("] ", 1)[-1] if line.startswith("[rank") else line
                logger.info("%s", line)
            rc = proc.wait()
        except BaseException:  # the task was cancelled or interrupted: do not leave trainers running
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if rc != 0:
        raise KilnError(f"{log_path}: trainer exited with code {rc}: {reason or (tail[-1] if tail else 'no output')}"
                        f"; fix that and rerun the stage (it resumes from the last checkpoint). Last lines:\n"
                        + "\n".join(tail))


# The line that says why a run failed: the trainer's own "error:"/"stopped:" line (from any rank),
# else the last line of a Python traceback (torchrun's ChildFailedError summary says nothing new).
_REASON = re.compile(r"^(\[rank \d+\] )?(error|stopped): |^(?!.*ChildFailedError)[\w.]*(Error|Exception): ")


def _finish_artifact(build: Build, tokenizer: ArtifactRef, tokens: ArtifactRef, cfg: PretrainConfig) -> None:
    """Make the artifact small and self-contained: prune checkpoints, put the tokenizer beside the weights."""
    kept = list_checkpoints(build.dir)[-cfg.keep_checkpoints:] if cfg.keep_checkpoints else []
    for path in (build.dir / CHECKPOINTS).iterdir() if (build.dir / CHECKPOINTS).is_dir() else []:
        if path not in kept:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    final = build.dir / "final"
    for name in (MODEL_FILE, META_FILE, VOCAB_FILE):
        if (tokenizer.path / name).is_file():
            shutil.copy2(tokenizer.path / name, final / name)
    # Documents were packed as [BOS] doc EOS: a prompt should start the way documents did.
    shards = list_shards(tokens.path / "train")
    data_bos = json.loads((shards[0] / "manifest.json").read_text()).get("bos_id") if shards else None
    tok = Tokenizer.load(tokenizer.path)
    generation = {"prompt_prefix": [data_bos] if data_bos is not None else [tok.eos_id], "eos_id": tok.eos_id,
                  "bos_id": tok.bos_id}
    atomic_write_text(final / "generation.json", json.dumps(generation, indent=2))
