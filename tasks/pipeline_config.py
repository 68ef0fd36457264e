"""The whole pipeline's config: one section per stage, loaded from one TOML file.

``configs/demo.toml`` is an example; every key is checked against these
dataclasses, so a typo is an error naming the key, not a silently ignored setting.
Each section is read by the DAG step of the same name (`flows.dag.STEPS`), and its
type is that stage's declared config (`Stage.config`; tests/flows/test_dag.py checks both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kiln.config import load_config, path_field
from kiln.errors import KilnError
from tasks.clean import CleanConfig
from tasks.download import DownloadConfig
from tasks.dpo import DPOStageConfig
from tasks.evaluate import EvaluateConfig
from tasks.export import ExportConfig
from tasks.generate import GenerateConfig
from tasks.pretokenize import PretokenizeConfig
from tasks.pretrain import PretrainConfig
from tasks.sft import SFTStageConfig
from tasks.sft_data import DPODataConfig, SFTDataConfig
from tasks.tokenizer import TokenizerConfig


@dataclass(frozen=True)
class StoreConfig:
    """Where artifacts live."""

    root: str = path_field("")
    """Artifact store root; empty means ``$KILN_HOME`` or ``./kiln-artifacts``."""


@dataclass(frozen=True)
class PipelineConfig:
    """Every stage's settings; stages read only their own section."""

    download: DownloadConfig = field(default_factory=DownloadConfig)
    """Files to fetch; none (no ``[download]`` section) when the corpus is all ``clean.inputs``."""
    store: StoreConfig = field(default_factory=StoreConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    pretokenize: PretokenizeConfig = field(default_factory=PretokenizeConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    sft_download: DownloadConfig | None = None
    """Instruction data (alpaca, BELLE, firefly, ShareGPT files); without it SFT and DPO are skipped."""
    sft_data: SFTDataConfig = field(default_factory=SFTDataConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    dpo_download: DownloadConfig | None = None
    """Preference pairs ``{prompt, chosen, rejected}``; without it DPO is skipped."""
    dpo_data: DPODataConfig = field(default_factory=DPODataConfig)
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


def load_pipeline_config(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read a pipeline TOML file plus ``section.key=value`` overrides."""
    cfg = load_config(PipelineConfig, path, overrides)
    check_data(cfg, str(path))
    return cfg


def check_data(cfg: PipelineConfig, where: str) -> None:
    """A `KilnError` naming `where` unless the config names a corpus, and each post-training section its files.

    Checked here, not in `DownloadConfig`, because an empty ``[download]`` is fine when ``clean.inputs``
    names the corpus; and here the message can name the config file.
    """
    if not cfg.download.sources and not cfg.clean.inputs:
        raise KilnError(f"{where}: no pretraining data: add [[download.sources]] (name, url) to fetch files, "
                        'or clean.inputs = ["/path/*.jsonl.zst"] under [clean] to read them in place')
    for name in ("sft_download", "dpo_download"):
        section = getattr(cfg, name)
        if section is not None and not section.sources:
            raise KilnError(f"{where}: [{name}] has no sources: add [[{name}.sources]] with name and url, "
                            "or remove the section")
