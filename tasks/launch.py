"""Running a trainer recipe from a training stage: one launcher for pretrain, sft and dpo.

    run = launch_trainer("trainer.sft", train_cfg, cfg.launch, build.dir)
    record_training(build, run)

The trainer runs in its own process (``python -m trainer.<recipe>``, or ``torchrun
--standalone --nproc-per-node N -m trainer.<recipe>`` for several devices): trainers
import neither Prefect nor Dask and run unchanged on a GPU node. The stage writes
the trainer's config into the run directory (the store's build directory), streams
the trainer's output lines to the Prefect logger and to ``train.log``, turns a
failure into a `KilnError` carrying the trainer's last lines, and reads the typed
``DONE.json`` (`trainer.summary.TrainSummary`).

The trainer dies with the stage's process (a ``kill -9`` of the flow run leaves no
orphan training on) and holds its run directory for its whole life, so two trainers
never build one directory at once (`trainer.lifeline`).

The build directory survives a failure, so a rerun of the stage relaunches the
trainer in the same directory and it resumes from its newest valid checkpoint.
After success only the newest `launch.keep_checkpoints` checkpoints are kept (by step:
the same ones whether or not the run was killed and resumed on the way).

`record_training` marks the run's logs (`RUN_LOGS`: the trainer's metrics, summary and
wall clocks, train.log, the config with host paths) for the artifact manifest, so its
``content_sha256`` is the same for every run of one config, killed and resumed or not.

Launcher: with ``nproc_per_node = 1`` and ``launcher = "auto"`` the trainer starts as
plain ``python -m``. torchrun's agent imports torch once more and runs a rendezvous
before starting the worker: measured on a loaded 2-core CPU box, a 1-step debug run
took 9.8-14.9 s with python and 15.6-21.0 s with torchrun (~6 s more), for nothing
when there is one process.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.config import to_dict
from kiln.errors import KilnError
from storage.atomic import atomic_write_text
from storage.store import Build
from trainer.checkpoint import CHECKPOINTS, list_checkpoints
from trainer.config import LaunchSection
from trainer.lifeline import PARENT_ENV
from trainer.loop import RUN_LOGS as TRAINER_RUN_LOGS
from trainer.summary import TrainSummary

REPO_ROOT = Path(__file__).resolve().parents[1]
TAIL_LINES = 15
CONFIG_FILE = "train_config.json"
TRAIN_LOG = "train.log"
RUN_LOGS = (*TRAINER_RUN_LOGS, TRAIN_LOG)
"""Run logs of every training artifact: the trainer's (`trainer.loop.RUN_LOGS`, with train_config.json:
host paths; the manifest's ``config`` and the checkpoints' config.json hold the settings) and train.log."""
log = logging.getLogger("kiln.train")


@dataclass(frozen=True)
class TrainerRun:
    """What a finished launch tells the stage."""

    summary: TrainSummary
    resumed: bool
    """The run directory already held checkpoints (a failed or killed earlier attempt)."""


def launch_trainer(module: str, train_cfg: Any, launch: LaunchSection, run_dir: Path) -> TrainerRun:
    """Write `train_cfg` into `run_dir`, run `module` on it, prune checkpoints, return the summary."""
    config_path = run_dir / CONFIG_FILE
    atomic_write_text(config_path, json.dumps(to_dict(train_cfg), indent=2))
    resumed = bool(list_checkpoints(run_dir))
    run_trainer(launch_command(module, launch, config_path), run_dir / TRAIN_LOG)
    summary = TrainSummary.read(run_dir)
    keep_newest_checkpoints(run_dir, launch.keep_checkpoints)
    return TrainerRun(summary, resumed)


def record_training(build: Build, run: TrainerRun) -> None:
    """The headline numbers in the artifact manifest and its run logs, the same for every training stage."""
    build.run_logs.extend([p for p in RUN_LOGS if p not in build.run_logs])
    done = run.summary
    build.counts.update({"steps": done.steps, "tokens_seen": done.tokens_seen, "final_loss": done.final_loss,
                         "val_loss": done.val_loss, "params": done.params, "trainable_params": done.trainable_params})
    build.extra["training"] = {"resumed": run.resumed, "elapsed_s": done.elapsed_s, "world_size": done.world_size,
                               "lora_rank": done.lora_rank}


def launch_command(module: str, launch: LaunchSection, config_path: Path) -> list[str]:
    """``python -m <module>`` or torchrun around it, both from this interpreter's environment."""
    trainer = ["-m", module, "--config", str(config_path)]
    if not launch.use_torchrun:
        return [sys.executable, *trainer]
    # torchrun's agent runs under trainer.lifeline, so it dies with this process like a plain trainer does.
    return [sys.executable, "-m", "trainer.lifeline", "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={launch.nproc_per_node}", *trainer]


def keep_newest_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (and anything else under checkpoints/)."""
    kept = list_checkpoints(run_dir)[-keep:] if keep else []
    root = run_dir / CHECKPOINTS
    for path in root.iterdir() if root.is_dir() else []:
        if path not in kept:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


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
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid()),  # the trainer dies with us
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
