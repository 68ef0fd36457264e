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

Several nodes (`LaunchSection.nnodes` > 1): one torchrun agent per node, meeting in a
c10d rendezvous (`torchrun_args`). With ``launcher = "srun"`` the stage runs inside a
Slurm allocation and ``srun`` starts every node's agent; its output (every rank's)
comes back through srun. With ``launcher = "torchrun"`` the stage starts this node's
agent and writes ``launch.json`` (module and launch settings) into the run directory;
every other node runs ``python -m tasks.launch --join <run dir>``, which waits for that
file and starts the same agent (`join`). The file is removed when the run ends, so it
is not part of the artifact. With ``launcher = "template"`` another scheduler starts
them from `LaunchSection.command_template`.

The stage still owns resume and the artifact: the run directory must be on a
filesystem every node mounts at the same path (the trainer's config holds absolute
paths, and every rank writes its shard and RNG state of each checkpoint into it;
rank 0, on whichever node the rendezvous put it, writes the rest and DONE.json). The
stage reads DONE.json once its own agent exits, which torchrun's exit barrier holds
until every node's workers have finished.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.config import from_dict, to_dict
from kiln.errors import KilnError
from storage.atomic import atomic_write_text
from storage.store import Build
from trainer.checkpoint import CHECKPOINTS, list_checkpoints
from trainer.config import RDZV_PORT, LaunchSection
from trainer.lifeline import PARENT_ENV, parent_death_signal
from trainer.loop import RUN_LOGS as TRAINER_RUN_LOGS
from trainer.summary import TrainSummary

REPO_ROOT = Path(__file__).resolve().parents[1]
TAIL_LINES = 15
CONFIG_FILE = "train_config.json"
LAUNCH_FILE = "launch.json"
"""What a joining node needs to start the leader's agent (`join`); in the run directory while the run lasts."""
JOIN_TIMEOUT_S = 600.0  # torchrun's own rendezvous join timeout
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
    cmd = launch_command(module, launch, config_path)
    spec = run_dir / LAUNCH_FILE
    if launch.resolved_launcher == "torchrun" and launch.multi_node:
        atomic_write_text(spec, json.dumps({"module": module, "launch": to_dict(launch)}, indent=2))
        _logger().info("waiting for the other nodes; on each run: python -m tasks.launch --join %s", run_dir)
    try:
        run_trainer(cmd, run_dir / TRAIN_LOG, arms_itself=launch.resolved_launcher in ("python", "torchrun"))
    finally:
        spec.unlink(missing_ok=True)
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
    """The command that starts `module` on `config_path` as `launch` says, from this interpreter's environment:
    ``python -m``, torchrun, srun around torchrun, or the command template filled in."""
    trainer = ["-m", module, "--config", str(config_path)]
    kind = launch.resolved_launcher
    if kind == "python":
        return [sys.executable, *trainer]
    if kind == "torchrun":
        # torchrun's agent runs under trainer.lifeline, so it dies with this process like a plain trainer does.
        return [sys.executable, "-m", "trainer.lifeline", "-m", "torch.distributed.run",
                *torchrun_args(launch, config_path.parent), *trainer]
    if kind == "srun":
        return srun_command(launch, config_path.parent, trainer)
    values = {"python": sys.executable, "module": module, "config": str(config_path), "nnodes": str(launch.nnodes),
              "nproc_per_node": str(launch.nproc_per_node), "rdzv_endpoint": launch.rdzv_endpoint,
              "rdzv_id": rdzv_id(launch, config_path.parent)}
    quoted = {k: shlex.quote(v) for k, v in values.items()}
    return shlex.split(launch.command_template.format(
        **quoted, torchrun_args=shlex.join(torchrun_args(launch, config_path.parent))))


def torchrun_args(launch: LaunchSection, run_dir: Path, endpoint: str = "") -> list[str]:
    """torchrun's options: ``--standalone`` on one node without an endpoint, else a c10d rendezvous.

    c10d needs no service of its own: the agent on the endpoint's host serves the rendezvous
    store, and ranks are assigned at the rendezvous (no ``--node-rank``).
    """
    endpoint = endpoint or launch.rdzv_endpoint
    per_node = f"--nproc-per-node={launch.nproc_per_node}"
    if not launch.multi_node and not endpoint:
        return ["--standalone", per_node]
    low, high = launch.node_range
    host_port = endpoint if ":" in endpoint else f"{endpoint}:{RDZV_PORT}"
    return [f"--nnodes={low}" if low == high else f"--nnodes={low}:{high}", per_node, "--rdzv-backend=c10d",
            f"--rdzv-endpoint={host_port}", f"--rdzv-id={rdzv_id(launch, run_dir)}"]


def rdzv_id(launch: LaunchSection, run_dir: Path) -> str:
    """`launch.rdzv_id`, else ``<stage>-<artifact key>`` from the build directory ``<store>/<stage>/.partial-<key>``
    (any other directory: its parent's and its own name): the same on every node of the run whatever the
    mount point, and a node started for another stage or config waits under another id instead of joining."""
    if launch.rdzv_id:
        return launch.rdzv_id
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{run_dir.parent.name}-{run_dir.name.removeprefix('.partial-')}")


def srun_command(launch: LaunchSection, run_dir: Path, trainer: list[str]) -> list[str]:
    """``srun`` starting one torchrun agent per node of this Slurm allocation.

    The endpoint defaults to the allocation's first host (where sbatch runs the stage),
    and ``--relative=0`` makes the step start there, so that host runs an agent to serve
    the rendezvous. The tasks' parent is slurmstepd, not this process: they must not
    watch for it (`trainer.lifeline`); srun itself gets SIGTERM when the stage dies and
    then stops the step on every node.
    """
    low, high = launch.node_range
    endpoint = launch.rdzv_endpoint or (slurm_first_host() if launch.multi_node else "")
    place = ["--relative=0"] if launch.multi_node and not launch.rdzv_endpoint else []
    return ["srun", f"--nodes={low}" if low == high else f"--nodes={low}-{high}", "--ntasks-per-node=1",
            "--kill-on-bad-exit=1", f"--export=ALL,{PARENT_ENV}=", *place,
            sys.executable, "-m", "torch.distributed.run", *torchrun_args(launch, run_dir, endpoint), *trainer]


def slurm_first_host() -> str:
    """The first host of the Slurm job's node list (``scontrol show hostnames`` expands ``node[01-04]``)."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        raise KilnError("launch.launcher = 'srun' with launch.nnodes > 1: SLURM_JOB_NODELIST is not set, so this "
                        "is not a Slurm allocation; run the flow inside sbatch/salloc, or set launch.rdzv_endpoint")
    try:
        done = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True,
                              timeout=60)
    except FileNotFoundError:
        raise KilnError("launch.launcher = 'srun': scontrol is not on PATH; set launch.rdzv_endpoint") from None
    except subprocess.CalledProcessError as exc:
        raise KilnError(f"scontrol show hostnames {nodelist} failed: {exc.stderr.strip()}; "
                        f"set launch.rdzv_endpoint") from None
    hosts = done.stdout.split()
    if not hosts:
        raise KilnError(f"scontrol show hostnames {nodelist} printed no host; set launch.rdzv_endpoint")
    return hosts[0]


def join(run_dir: Path, timeout_s: float = JOIN_TIMEOUT_S) -> None:
    """Run this node's torchrun agent in the multi-node run that a stage launches in `run_dir` (shared).

    Waits for the stage's ``launch.json`` and then starts the same agent command the stage
    started, from this node's interpreter; returns when the run ends, KilnError if it failed.
    """
    spec_path = run_dir / LAUNCH_FILE
    deadline = time.monotonic() + timeout_s
    while not spec_path.is_file():
        if time.monotonic() >= deadline:
            raise KilnError(f"{spec_path}: no stage launched a multi-node run in {run_dir} within {timeout_s:.0f} s; "
                            f"start the stage (launch.launcher = 'torchrun', launch.nnodes > 1) and check that this "
                            f"node sees the same run directory (a shared filesystem)")
        time.sleep(0.5)
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    launch = from_dict(LaunchSection, spec["launch"], where=str(spec_path))
    run_trainer(launch_command(spec["module"], launch, run_dir / CONFIG_FILE), None)


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


def run_trainer(cmd: list[str], log_path: Path | None, *, arms_itself: bool = True) -> None:
    """Run the trainer, streaming its output to the logger and `log_path`; KilnError on a non-zero exit.

    `arms_itself`: `cmd` is a trainer or `trainer.lifeline` and watches for this process's death
    itself (through ``KILN_TRAINER_PARENT``). Otherwise (srun, a template's scheduler) the variable is
    cleared, since the processes that would read it have other parents, and `cmd` gets SIGTERM when
    this process dies (Linux), which a launcher like srun forwards to its tasks.
    """
    logger = _logger()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid()) if arms_itself else "",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    guard = parent_death_signal(signal.SIGTERM) if not arms_itself and sys.platform.startswith("linux") else None
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    reason = ""
    logger.info("launching: %s", shlex.join(cmd))
    with open(log_path or os.devnull, "a", encoding="utf-8") as log_file, subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        preexec_fn=guard,
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
        why = reason or (tail[-1] if tail else "no output")
        raise KilnError(f"{log_path or cmd[0]}: trainer exited with code {rc}: {why}"
                        f"; fix that and rerun the stage (it resumes from the last checkpoint). Last lines:\n"
                        + "\n".join(tail))


# The line that says why a run failed: the trainer's own "error:"/"stopped:" line (from any rank),
# else the last line of a Python traceback (torchrun's ChildFailedError summary says nothing new).
_REASON = re.compile(r"^(\[rank \d+\] )?(error|stopped): |^(?!.*ChildFailedError)[\w.]*(Error|Exception): ")


def main(argv: list[str] | None = None) -> int:
    """``python -m tasks.launch --join RUN_DIR``: this node's part of a multi-node training stage."""
    parser = argparse.ArgumentParser(prog="python -m tasks.launch", description=main.__doc__)
    parser.add_argument("--join", required=True, type=Path, metavar="RUN_DIR",
                        help="the stage's run directory, as its log names it (on a shared filesystem)")
    parser.add_argument("--timeout", type=float, default=JOIN_TIMEOUT_S,
                        help="seconds to wait for the stage to launch (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        join(args.join, args.timeout)
    except KilnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
