"""SFT stage: base model + chat data → a fine-tuned model, by launching ``trainer.sft``.

    ref = sft(pretrain_ref, sft_data_ref, SFTStageConfig(), store)
    # <ref>/final/{model.safetensors, config.json, tokenizer.model, tokenizer_meta.json, generation.json}
    # <ref>/{adapter/ (LoRA), metrics.jsonl, loss.png, DONE.json, train.log, train_config.json, checkpoints/}

Like every training stage, the trainer (``python -m trainer.sft``) is launched by
`tasks.launch` with ``run.out_dir`` = the store's build directory, so a failed or
killed stage resumes from the trainer's newest checkpoint when rerun. The base is
any artifact with ``final/`` (pretrain, sft) and its tokenizer comes from there.
`tasks.dpo` runs `trainer.dpo` through the same code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from kiln.chat import IM_END
from kiln.errors import KilnError
from model.loading import find_tokenizer_dir
from model.tokenizer import Tokenizer, copy_tokenizer
from storage.atomic import atomic_write_text
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from tasks.launch import launch_trainer, record_training
from tasks.stage import Stage, reported
from trainer.config import CheckpointSection, LaunchSection, OptimSection, RunSection, ScheduleSection
from trainer.finetune import BaseSection, ChatDataSection, LoRASection
from trainer.sft import SFTConfig

STAGE = "sft"


@dataclass(frozen=True)
class SFTStageConfig:
    """The trainer's sections (``[sft.optim]`` etc.) minus paths, plus how to launch it.

    ``data.dir``, ``data.tokenizer_dir`` and ``run.out_dir`` come from the artifacts: leave them
    empty. The sections default to the pretraining values: set fine-tuning ones (a lower
    ``optim.lr``, fewer ``run.steps``) in the config, as configs/sft/*.toml do.
    """

    data: ChatDataSection = field(default_factory=ChatDataSection)
    lora: LoRASection = field(default_factory=LoRASection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    run: RunSection = field(default_factory=RunSection)
    launch: LaunchSection = field(default_factory=LaunchSection)
    """How the trainer starts (``[sft.launch]``: processes, nodes, launcher, keep_checkpoints)."""

    def __post_init__(self) -> None:
        for key, value in (("data.dir", self.data.dir), ("data.tokenizer_dir", self.data.tokenizer_dir),
                           ("run.out_dir", self.run.out_dir)):
            if value:
                raise KilnError(f"{STAGE}.{key}: set by the stage from its artifacts; remove it from the config")

    def train_config(self, base_dir: str, data_dir: str, out_dir: str) -> SFTConfig:
        """The trainer's config with the stage's paths filled in."""
        return SFTConfig(**self.sections(base_dir, data_dir, out_dir))

    def sections(self, base_dir: str, data_dir: str, out_dir: str) -> dict[str, Any]:
        """The trainer config's sections, paths filled in (DPO adds its own section to these)."""
        return {"base": BaseSection(dir=base_dir), "data": dataclasses.replace(self.data, dir=data_dir),
                "lora": self.lora, "optim": self.optim, "schedule": self.schedule, "checkpoint": self.checkpoint,
                "run": dataclasses.replace(self.run, out_dir=out_dir)}


SFT = Stage(STAGE, "2", SFTStageConfig, inputs=("base", "data"))


def sft(base: ArtifactRef, data: ArtifactRef, cfg: SFTStageConfig, store: ArtifactStore) -> ArtifactRef:
    """Fine-tune `base` on an ``sft_data`` artifact; rerunning after a failure resumes from the checkpoint."""
    return SFT.produce(store, cfg, {"base": base, "data": data},
                       lambda build: train_into(build, base, data, cfg, "trainer.sft"))


def train_into(build: Build, base: ArtifactRef, data: ArtifactRef, cfg: Any, module: str) -> None:
    """Launch `module` (trainer.sft or trainer.dpo) and make the run directory a self-contained artifact."""
    if not (base.path / "final" / "config.json").is_file():
        raise KilnError(f"{base.path}: artifact {base} has no final/ model; use a pretrain or sft artifact")
    train_cfg = cfg.train_config(str(base.path), str(data.path), str(build.dir))
    run = launch_trainer(module, train_cfg, cfg.launch, build.dir)
    finish_artifact(build, base, chat_bos=train_cfg.data.bos)
    record_training(build, run)


def finish_artifact(build: Build, base: ArtifactRef, *, chat_bos: bool) -> None:
    """Put the tokenizer and chat generation settings beside the weights."""
    final = build.dir / "final"
    tokenizer_dir = find_tokenizer_dir(base.path / "final")
    copy_tokenizer(tokenizer_dir, final)
    tok = Tokenizer.load(tokenizer_dir)
    generation = {"template": "chatml", "chat_bos": chat_bos, "stop_ids": [tok.special_tokens[IM_END], tok.eos_id],
                  "eos_id": tok.eos_id, "bos_id": tok.bos_id}
    atomic_write_text(final / "generation.json", json.dumps(generation, indent=2))


@SFT.task
def sft_task(base: ArtifactRef, data: ArtifactRef, cfg: SFTStageConfig, store_root: str) -> ArtifactRef:
    """Prefect wrapper: cached by artifact key; no retries (a rerun resumes from the checkpoint anyway)."""
    return reported(sft(base, data, cfg, open_store(store_root)))
