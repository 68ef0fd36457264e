"""The launch section every training stage shares (``[pretrain.launch]`` ...) and the one launcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import canonical_dict, load_config
from kiln.errors import KilnError
from tasks.launch import launch_command
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


@pytest.mark.parametrize(("text", "says"), [
    ("[pretrain]\nnproc_per_node = 2\n", "unknown key 'pretrain.nproc_per_node'"),
    ("[sft]\nkeep_checkpoints = 2\n", "unknown key 'sft.keep_checkpoints'"),
    ("[dpo.launch]\nnproc_per_node = 0\n", "launch.nproc_per_node must be >= 1, got 0"),
    ("[pretrain.launch]\nnproc_per_node = 2\nlauncher = \"python\"\n", "use 'torchrun'"),
    ("[sft.launch]\nkeep_checkpoints = -1\n", "launch.keep_checkpoints must be >= 0"),
    ("[sft.launch]\nlauncher = \"slurm\"\n", "sft.launch.launcher"),
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
