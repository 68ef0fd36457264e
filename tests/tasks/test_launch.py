"""The launch section every training stage shares (``[pretrain.launch]`` ...) and the one launcher."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from kiln.config import canonical_dict, load_config
from kiln.errors import KilnError
from tasks.launch import join, launch_command
from tasks.pipeline_config import PipelineConfig
from trainer.config import LaunchSection

PIPELINE = """
[[download.sources]]
name = "x.xml.bz2"
url = "pkg://gensim/test/test_data/x.bz2"

[pretrain.launch]
nproc_per_node = 4
keep_checkpoints = 2

[sft.launch]
launcher = "torchrun"

[dpo.launch]
nproc_per_node = 2
launcher = "torchrun"
keep_checkpoints = 0
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return path


def test_every_training_stage_reads_its_launch_section_from_toml(tmp_path):
    cfg = load_config(PipelineConfig, write(tmp_path, PIPELINE))
    assert cfg.pretrain.launch == LaunchSection(nproc_per_node=4, keep_checkpoints=2)
    assert cfg.sft.launch == LaunchSection(launcher="torchrun")
    assert cfg.dpo.launch == LaunchSection(nproc_per_node=2, launcher="torchrun", keep_checkpoints=0)
    assert cfg.pretrain.launch.use_torchrun and cfg.sft.launch.use_torchrun
    assert not LaunchSection().use_torchrun  # one process: plain python, no torchrun start-up


def test_only_keep_checkpoints_enters_the_artifact_key():
    key = canonical_dict(LaunchSection(nproc_per_node=8, launcher="torchrun", keep_checkpoints=3))
    assert key == {"keep_checkpoints": 3}
    # How many nodes, and how they meet, never changes what is learned either.
    multi = LaunchSection(nnodes="2:4", rdzv_endpoint="n0:29500", rdzv_id="r", launcher="srun", keep_checkpoints=3)
    assert canonical_dict(multi) == {"keep_checkpoints": 3}


@pytest.mark.parametrize(("text", "says"), [
    ("[pretrain]\nnproc_per_node = 2\n", "unknown key 'pretrain.nproc_per_node'"),
    ("[sft]\nkeep_checkpoints = 2\n", "unknown key 'sft.keep_checkpoints'"),
    ("[dpo.launch]\nnproc_per_node = 0\n", "launch.nproc_per_node must be >= 1, got 0"),
    ("[pretrain.launch]\nnproc_per_node = 2\nlauncher = \"python\"\n", "use 'torchrun'"),
    ("[sft.launch]\nkeep_checkpoints = -1\n", "launch.keep_checkpoints must be >= 0"),
    ("[sft.launch]\nlauncher = \"slurm\"\n", "sft.launch.launcher"),
    ("[pretrain.launch]\nnnodes = 2\nlauncher = \"python\"\n", "launcher = 'python' starts one process"),
    ("[pretrain.launch]\nnnodes = 2\n", "launch.nnodes = 2 needs launch.rdzv_endpoint"),
    ("[pretrain.launch]\nnnodes = \"4:2\"\n", "launch.nnodes must be a count >= 1 or \"MIN:MAX\""),
    ("[pretrain.launch]\nnnodes = 0\n", "launch.nnodes must be a count >= 1"),
    ("[pretrain.launch]\nnnodes = 2\nrdzv_endpoint = \"n0:http\"\n", "launch.rdzv_endpoint must be \"host:port\""),
    ("[pretrain.launch]\nrdzv_id = \"a b\"\n", "launch.rdzv_id must not contain spaces"),
    ("[pretrain.launch]\nlauncher = \"template\"\n", "needs launch.command_template"),
    ("[pretrain.launch]\ncommand_template = \"x {module} {config}\"\n", "used only with launch.launcher = 'template'"),
    ("[pretrain.launch]\nlauncher = \"template\"\ncommand_template = \"x {modul} {config}\"\n",
     "unknown placeholder {modul}"),
    ("[pretrain.launch]\nlauncher = \"template\"\ncommand_template = \"x {torchrun_args}\"\n",
     "must contain {module}"),
])
def test_old_keys_and_bad_values_are_one_line_errors(tmp_path, text, says):
    head = PIPELINE.split("[pretrain.launch]")[0]
    with pytest.raises(KilnError) as err:
        load_config(PipelineConfig, write(tmp_path, head + text))
    assert says in str(err.value) and "\n" not in str(err.value)


def test_launch_command_runs_any_recipe(tmp_path):
    one = launch_command("trainer.dpo", LaunchSection(), tmp_path / "c.json")
    assert one[1:] == ["-m", "trainer.dpo", "--config", str(tmp_path / "c.json")]
    two = launch_command("trainer.sft", LaunchSection(nproc_per_node=2), tmp_path / "c.json")
    assert two[1:7] == ["-m", "trainer.lifeline", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert two[7:9] == ["-m", "trainer.sft"]


def test_multi_node_torchrun_meets_in_a_c10d_rendezvous_named_after_the_build(tmp_path):
    run_dir = tmp_path / "pretrain" / ".partial-5d0c"
    launch = LaunchSection(nnodes=2, nproc_per_node=8, rdzv_endpoint="node0")  # auto: torchrun; default port
    cmd = launch_command("trainer.pretrain", launch, run_dir / "c.json")
    assert cmd[1:5] == ["-m", "trainer.lifeline", "-m", "torch.distributed.run"]
    assert cmd[5:10] == ["--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400",
                         "--rdzv-id=pretrain-5d0c"]
    elastic = LaunchSection(nnodes="1:4", rdzv_endpoint="node0:29500", rdzv_id="mine")
    assert launch_command("trainer.sft", elastic, run_dir / "c.json")[5:10] == [
        "--nnodes=1:4", "--nproc-per-node=1", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29500", "--rdzv-id=mine"]


def fake_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``scontrol`` on PATH that expands ``node[01-03]`` the way Slurm's does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames node[01-03]" ] && '
                      'printf "node01\\nnode02\\nnode03\\n"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_srun_starts_one_agent_per_node_and_finds_the_endpoint_in_the_allocation(tmp_path, monkeypatch):
    fake_scontrol(tmp_path, monkeypatch)
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[01-03]")
    run_dir = tmp_path / "sft" / ".partial-77"
    cmd = launch_command("trainer.sft", LaunchSection(nnodes=3, nproc_per_node=4, launcher="srun"), run_dir / "c.json")
    assert cmd[:7] == ["srun", "--nodes=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                       "--export=ALL,KILN_TRAINER_PARENT=", "--relative=0", sys.executable]
    assert cmd[7:] == ["-m", "torch.distributed.run", "--nnodes=3", "--nproc-per-node=4", "--rdzv-backend=c10d",
                       "--rdzv-endpoint=node01:29400", "--rdzv-id=sft-77", "-m", "trainer.sft",
                       "--config", str(run_dir / "c.json")]
    given = LaunchSection(nnodes="2:3", launcher="srun", rdzv_endpoint="login1:29500")
    cmd = launch_command("trainer.sft", given, run_dir / "c.json")  # no allocation lookup, no --relative
    assert cmd[1] == "--nodes=2-3" and "--relative=0" not in cmd and "--rdzv-endpoint=login1:29500" in cmd


def test_srun_outside_an_allocation_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    monkeypatch.delenv("SLURM_NODELIST", raising=False)
    with pytest.raises(KilnError, match="not a Slurm allocation; run the flow inside sbatch/salloc"):
        launch_command("trainer.sft", LaunchSection(nnodes=2, launcher="srun"), tmp_path / "c.json")
    one = launch_command("trainer.sft", LaunchSection(launcher="srun", nproc_per_node=2), tmp_path / "c.json")
    assert one[1] == "--nodes=1" and "--standalone" in one  # one node needs no rendezvous endpoint


def test_a_template_gets_torchrun_args_and_quoted_values(tmp_path):
    config = tmp_path / "with space" / "c.json"
    template = ("mpirun -np {nnodes} -npernode 1 {python} -m torch.distributed.run {torchrun_args} "
                "-m {module} --config {config}")
    launch = LaunchSection(nnodes=2, launcher="template", rdzv_endpoint="n0:1234", command_template=template)
    cmd = launch_command("trainer.dpo", launch, config)
    assert cmd == ["mpirun", "-np", "2", "-npernode", "1", sys.executable, "-m", "torch.distributed.run",
                   "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", "--rdzv-endpoint=n0:1234",
                   f"--rdzv-id={tmp_path.name}-with_space", "-m", "trainer.dpo", "--config", str(config)]


def test_join_without_a_launched_run_times_out_naming_the_directory(tmp_path):
    with pytest.raises(KilnError, match="no stage launched a multi-node run in .* within 1 s"):
        join(tmp_path, timeout_s=1)
