"""Several nodes, simulated on one machine: two torchrun agents as two "nodes" of one process each.

The stage's own launch runs node 1 (`tasks.launch.launch_trainer`, the call every training
stage makes) and ``python -m tasks.launch --join <run dir>`` runs node 2, exactly as a second
host would; they meet in a c10d rendezvous on 127.0.0.1 and train over gloo. The run
directory is shared by construction (one filesystem), as it must be on a real cluster.

- The debug model learns the same losses on 2 nodes as in one plain process: the global
  batch is counted over all ranks (`trainer.config` module doc), as in the DDP test of
  `tests/trainer/test_distributed.py`, and with its tolerance.
- A run stopped after step 3 on 2 nodes resumes from its step-2 checkpoint on 1 node and
  ends with the losses of an uninterrupted run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.errors import KilnError
from tasks.launch import LAUNCH_FILE, TRAIN_LOG, launch_trainer
from tests.trainer.conftest import train_args, train_losses
from trainer.checkpoint import checkpoint_path
from trainer.config import LaunchSection, TrainConfig
from trainer.lifeline import PARENT_ENV
from trainer.pretrain import STOP_ENV, main

REPO_ROOT = Path(__file__).resolve().parents[2]
SHORT = ("run.steps=4", "checkpoint.every_steps=2", "run.val_every=2")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_nodes() -> LaunchSection:
    return LaunchSection(nnodes=2, nproc_per_node=1, launcher="torchrun", rdzv_endpoint=f"127.0.0.1:{free_port()}")


def train_config(data: Path, out: Path) -> TrainConfig:
    return load_config(TrainConfig, None, train_args(data, out, *SHORT))


def start_node(run_dir: Path) -> subprocess.Popen[str]:
    """The second "host": ``python -m tasks.launch --join``, in its own process like on another machine."""
    env = {k: v for k, v in os.environ.items() if k != PARENT_ENV}
    env.update(PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "tasks.launch", "--join", str(run_dir), "--timeout", "120"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(node: subprocess.Popen[str]) -> str:
    try:
        return node.communicate(timeout=300)[0]
    finally:
        if node.poll() is None:
            node.kill()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Shaped like a store's build directory, so the rendezvous id is the stage and key."""
    return tmp_path / "store" / "pretrain" / ".partial-0123abcd"


# Each launch is two torch start-ups per node (agent, worker) plus the rendezvous: 38-72 s each on a loaded 2-core box.
@pytest.mark.slow
def test_two_nodes_learn_what_one_process_learns(pattern_data, tmp_path, run_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    node2 = start_node(run_dir)
    try:
        run = launch_trainer("trainer.pretrain", train_config(pattern_data, run_dir), two_nodes(), run_dir)
    finally:
        out2 = finish(node2)
    assert node2.returncode == 0, out2[-3000:]
    assert "--nnodes=2" in out2 and "--rdzv-backend=c10d" in out2 and "--rdzv-id=pretrain-0123abcd" in out2
    assert run.summary.world_size == 2 and not run.resumed
    assert not (run_dir / LAUNCH_FILE).exists()  # the join file is not part of the artifact
    both = (run_dir / TRAIN_LOG).read_text() + out2
    assert "2 rank(s), parallel=ddp" in both  # rank 0 logs it, on whichever node the rendezvous put it

    assert main(train_args(pattern_data, tmp_path / "single", *SHORT)) == 0
    assert train_losses(run_dir) == pytest.approx(train_losses(tmp_path / "single"), rel=1e-5)


@pytest.mark.slow
def test_a_two_node_run_resumes_on_one_node(pattern_data, tmp_path, run_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv(STOP_ENV, "3")  # both nodes' trainers stop after step 3 (checkpoint at step 2)
    node2 = start_node(run_dir)
    try:
        with pytest.raises(KilnError, match=f"stopped: after step 3 because {STOP_ENV}=3"):
            launch_trainer("trainer.pretrain", train_config(pattern_data, run_dir), two_nodes(), run_dir)
    finally:
        out2 = finish(node2)
    assert node2.returncode != 0, out2[-3000:]
    step2 = checkpoint_path(run_dir, 2)
    assert {"rng-rank00000.pt", "rng-rank00001.pt", "model.pt"} <= {p.name for p in step2.iterdir()}
    assert not (run_dir / LAUNCH_FILE).exists()

    monkeypatch.delenv(STOP_ENV)
    run = launch_trainer("trainer.pretrain", train_config(pattern_data, run_dir), LaunchSection(), run_dir)
    assert run.resumed and run.summary.world_size == 1 and run.summary.steps == 4
    assert "step-00000002" in (run_dir / TRAIN_LOG).read_text()

    assert main(train_args(pattern_data, tmp_path / "single", *SHORT)) == 0
    assert train_losses(run_dir) == pytest.approx(train_losses(tmp_path / "single"), rel=1e-5)
