"""Pretrain stage: token shards + tokenizer → a trained model, by launching the trainer as a subprocess.

    ref = pretrain(tokens_ref, tokenizer_ref, PretrainConfig(), store)
    # <ref>/final/{model.safetensors, config.json, tokenizer.model, tokenizer_meta.json, generation.json}
    # <ref>/{metrics.jsonl, loss.png, DONE.json, train.log, train_config.json, checkpoints/step-%08d/}

The trainer (``python -m trainer.pretrain``) is launched by `tasks.launch`, as for
every training stage, with ``run.out_dir`` = the store's build directory: a rerun
after a failure resumes from the trainer's newest checkpoint. This stage writes the
trainer's config (data paths from the tokens artifact, vocab size from the
tokenizer) and makes the finished run a self-contained artifact: the tokenizer and
generation settings beside the weights in ``final/``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from kiln.errors import KilnError
from model.tokenizer import Tokenizer, copy_tokenizer
from storage.atomic import atomic_write_text
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from storage.token_shards import list_shards
from tasks.launch import launch_trainer, record_training
from tasks.stage import Stage, reported
from trainer.config import (
    CheckpointSection,
    DataSection,
    LaunchSection,
    ModelSection,
    OptimSection,
    RunSection,
    ScheduleSection,
    TrainConfig,
)

STAGE = "pretrain"


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
    launch: LaunchSection = field(default_factory=LaunchSection)
    """How the trainer starts (``[pretrain.launch]``: processes, nodes, launcher, keep_checkpoints)."""

    def __post_init__(self) -> None:
        for key, value in (("data.train_dir", self.data.train_dir), ("data.val_dir", self.data.val_dir),
                           ("run.out_dir", self.run.out_dir)):
            if value:
                raise KilnError(f"pretrain.{key}: set by the stage from its artifacts; remove it from the config")
        if "vocab_size" in self.model.overrides:
            raise KilnError("pretrain.model.overrides.vocab_size: set by the stage from the tokenizer's "
                            "model_vocab_size; remove it from the config")
        self.train_config()  # cross-section checks (seq_len vs the model's max_seq_len, warmup vs steps)

    def train_config(self, *, train_dir: str = "", val_dir: str = "", out_dir: str = "",
                     vocab_size: int | None = None) -> TrainConfig:
        """The trainer's TrainConfig with the stage's paths and the tokenizer's vocab filled in."""
        cfg = TrainConfig(model=self.model, optim=self.optim, schedule=self.schedule, checkpoint=self.checkpoint,
                          data=dataclasses.replace(self.data, train_dir=train_dir, val_dir=val_dir),
                          run=dataclasses.replace(self.run, out_dir=out_dir))
        return cfg.with_vocab_size(vocab_size) if vocab_size is not None else cfg


PRETRAIN = Stage(STAGE, "2", PretrainConfig, inputs=("tokens", "tokenizer"))


def pretrain(tokens: ArtifactRef, tokenizer: ArtifactRef, cfg: PretrainConfig, store: ArtifactStore) -> ArtifactRef:
    """Train a model on a pretokenized artifact; rerunning after a failure resumes from its checkpoint."""
    return PRETRAIN.produce(store, cfg, {"tokens": tokens, "tokenizer": tokenizer},
                            lambda build: _train_into(build, tokens, tokenizer, cfg))


@PRETRAIN.task
def pretrain_task(tokens: ArtifactRef, tokenizer: ArtifactRef, cfg: PretrainConfig, store_root: str) -> ArtifactRef:
    """Prefect wrapper: cached by artifact key; no retries (a rerun resumes from the checkpoint anyway)."""
    return reported(pretrain(tokens, tokenizer, cfg, open_store(store_root)))


def _train_into(build: Build, tokens: ArtifactRef, tokenizer: ArtifactRef, cfg: PretrainConfig) -> None:
    tok = Tokenizer.load(tokenizer.path)
    train_dir, val_dir = tokens.path / "train", tokens.path / "val"
    has_val = val_dir.is_dir() and bool(list_shards(val_dir))
    train_cfg = cfg.train_config(train_dir=str(train_dir), val_dir=str(val_dir) if has_val else "",
                                 out_dir=str(build.dir), vocab_size=tok.model_vocab_size)
    run = launch_trainer("trainer.pretrain", train_cfg, cfg.launch, build.dir)
    _finish_artifact(build, tokenizer, tokens)
    record_training(build, run)


def _finish_artifact(build: Build, tokenizer: ArtifactRef, tokens: ArtifactRef) -> None:
    """Make the artifact self-contained: the tokenizer and generation settings beside the weights."""
    final = copy_tokenizer(tokenizer.path, build.dir / "final")
    # Documents were packed as [BOS] doc EOS: a prompt should start the way documents did.
    shards = list_shards(tokens.path / "train")
    data_bos = json.loads((shards[0] / "manifest.json").read_text()).get("bos_id") if shards else None
    tok = Tokenizer.load(tokenizer.path)
    generation = {"prompt_prefix": [data_bos] if data_bos is not None else [tok.eos_id], "eos_id": tok.eos_id,
                  "bos_id": tok.bos_id}
    atomic_write_text(final / "generation.json", json.dumps(generation, indent=2))
