"""SFT stage: base model + chat data → a fine-tuned model, by launching ``trainer.sft``.

    ref = sft(pretrain_ref, sft_data_ref, SFTStageConfig(), store)
    # <ref>/final/{model.safetensors, config.json, tokenizer.model, tokenizer_meta.json, generation.json}
    # <ref>/{adapter/ (LoRA), metrics.jsonl, loss.png, DONE.json, train.log, train_config.json, checkpoints/}

Like the pretrain stage (whose launcher and log streaming it reuses): the trainer
runs as its own process (``python -m trainer.sft`` or torchrun for several devices)
with ``run.out_dir`` = the store's build directory, so a failed or killed stage
resumes from the trainer's newest checkpoint when rerun. The base is any artifact
with ``final/`` (pretrain, sft) and its tokenizer comes from there.
`tasks.dpo` runs `trainer.dpo` through the same code.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from typing import Any, Literal

from kiln.chat import IM_END, find_tokenizer_dir
from kiln.config import runtime_field, to_dict
from kiln.errors import KilnError
from kiln.tokenizer import META_FILE, MODEL_FILE, VOCAB_FILE, Tokenizer
from storage.atomic import atomic_write_text
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from tasks.pretrain import launch_command, run_trainer
from tasks.stage import Stage, reported
from trainer.checkpoint import CHECKPOINTS, list_checkpoints
from trainer.config import CheckpointSection, OptimSection, RunSection, ScheduleSection
from trainer.sft import BaseSection, ChatDataSection, LoRASection, SFTConfig

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
    nproc_per_node: int = runtime_field(1)
    """Trainer processes (one per GPU); the global batch does not depend on it."""
    launcher: Literal["auto", "torchrun", "python"] = runtime_field("auto")
    """auto = plain ``python -m`` for one process, torchrun for several."""
    keep_checkpoints: int = 1
    """Newest checkpoints kept in the finished artifact; 0 keeps none."""

    def __post_init__(self) -> None:
        for key, value in (("data.dir", self.data.dir), ("data.tokenizer_dir", self.data.tokenizer_dir),
                           ("run.out_dir", self.run.out_dir)):
            if value:
                raise KilnError(f"{STAGE}.{key}: set by the stage from its artifacts; remove it from the config")
        if self.nproc_per_node < 1 or self.keep_checkpoints < 0:
            raise KilnError(f"{STAGE}: nproc_per_node must be >= 1 and keep_checkpoints >= 0")

    def train_config(self, base_dir: str, data_dir: str, out_dir: str) -> SFTConfig:
        """The trainer's config with the stage's paths filled in."""
        return SFTConfig(**self.sections(base_dir, data_dir, out_dir))

    def sections(self, base_dir: str, data_dir: str, out_dir: str) -> dict[str, Any]:
        """The trainer config's sections, paths filled in (DPO adds its own section to these)."""
        return {"base": BaseSection(dir=base_dir), "data": dataclasses.replace(self.data, dir=data_dir),
                "lora": self.lora, "optim": self.optim, "schedule": self.schedule, "checkpoint": self.checkpoint,
                "run": dataclasses.replace(self.run, out_dir=out_dir)}


SFT = Stage(STAGE, "1", SFTStageConfig, inputs=("base", "data"))


def sft(base: ArtifactRef, data: ArtifactRef, cfg: SFTStageConfig, store: ArtifactStore) -> ArtifactRef:
    """Fine-tune `base` on an ``sft_data`` artifact; rerunning after a failure resumes from the checkpoint."""
    return SFT.produce(store, cfg, {"base": base, "data": data},
                       lambda build: train_into(build, base, data, cfg, "trainer.sft"))


def train_into(build: Build, base: ArtifactRef, data: ArtifactRef, cfg: Any, module: str) -> None:
    """Write the trainer config, launch `module`, and make the run directory a self-contained artifact."""
    if not (base.path / "final" / "config.json").is_file():
        raise KilnError(f"{base.path}: artifact {base} has no final/ model; use a pretrain or sft artifact")
    train_cfg = cfg.train_config(str(base.path), str(data.path), str(build.dir))
    config_path = build.dir / "train_config.json"
    atomic_write_text(config_path, json.dumps(to_dict(train_cfg), indent=2))
    resumed = bool(list_checkpoints(build.dir))
    # tasks.pretrain builds the launch for trainer.pretrain; the same launcher runs our module.
    cmd = [module if arg == "trainer.pretrain" else arg for arg in launch_command(cfg, config_path)]
    run_trainer(cmd, build.dir / "train.log")
    done = json.loads((build.dir / "DONE.json").read_text())
    finish_artifact(build, base, cfg.keep_checkpoints)
    build.counts.update({k: done[k] for k in ("steps", "tokens_seen", "final_loss", "val_loss", "params",
                                              "trainable_params")})
    build.extra["training"] = {"resumed": resumed, "elapsed_s": done["elapsed_s"], "world_size": done["world_size"],
                               "lora_rank": done["lora_rank"]}


def finish_artifact(build: Build, base: ArtifactRef, keep_checkpoints: int) -> None:
    """Prune checkpoints and put the tokenizer and chat generation settings beside the weights."""
    kept = list_checkpoints(build.dir)[-keep_checkpoints:] if keep_checkpoints else []
    root = build.dir / CHECKPOINTS
    for path in root.iterdir() if root.is_dir() else []:
        if path not in kept:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    final = build.dir / "final"
    tokenizer_dir = find_tokenizer_dir(base.path / "final")
    for name in (MODEL_FILE, META_FILE, VOCAB_FILE):
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, final / name)
    tok = Tokenizer.load(tokenizer_dir)
    chat_bos = json.loads((build.dir / "train_config.json").read_text())["data"]["bos"]
    generation = {"template": "chatml", "chat_bos": chat_bos, "stop_ids": [tok.special_tokens[IM_END], tok.eos_id],
                  "eos_id": tok.eos_id, "bos_id": tok.bos_id}
    atomic_write_text(final / "generation.json", json.dumps(generation, indent=2))


@SFT.task
def sft_task(base: ArtifactRef, data: ArtifactRef, cfg: SFTStageConfig, store_root: str) -> ArtifactRef:
    """Prefect wrapper: cached by artifact key; no retries (a rerun resumes from the checkpoint anyway)."""
    return reported(STAGE, sft(base, data, cfg, open_store(store_root)))
