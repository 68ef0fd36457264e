"""What SFT and DPO share beyond the loop: their config, a base model with optional LoRA, and the export.

`FinetuneConfig` is SFT's config as is; DPO adds its ``dpo`` section. `FinetuneRecipe`
is the half of a `trainer.loop.Recipe` that both need: it loads the base weights
(a pretrain/SFT artifact or run directory, a ``final/`` directory, or a Hugging Face
Llama directory), freezes them behind adapters when ``lora.rank > 0``, batches chat
rows through the pretraining loader, and exports merged weights + tokenizer (+ the
adapters alone for LoRA runs). SFT and DPO add their data, loss and validation.
"""

from __future__ import annotations

import dataclasses
import json
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from kiln.config import runtime_field
from kiln.errors import KilnError
from model import Llama, ModelConfig
from model.hf_interop import load_weights
from model.loading import find_tokenizer_dir, model_dir
from model.lora import DEFAULT_TARGETS, apply_lora, merge_lora_state_dict, reset_lora_parameters
from model.tokenizer import Tokenizer, copy_tokenizer
from storage.atomic import atomic_write_text
from trainer.checkpoint import export_final
from trainer.config import CheckpointSection, OptimSection, RunSection, ScheduleSection, host_path_field
from trainer.loop import Parts, Recipe
from trainer.parallelize import DistEnv, parallelize
from trainer.sft_data import ChatDataset, PreferenceDataset, chat_loader
from trainer.state import TrainState


# -- config -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaseSection:
    dir: str = host_path_field()
    """Model to start from: an artifact/run dir holding ``final/``, a ``final/`` dir, or an HF Llama dir."""


@dataclass(frozen=True)
class ChatDataSection:
    dir: str = host_path_field()
    """Chat data artifact (``sft_data`` / ``dpo_data`` stage): ``train/`` and ``val/`` Parquet parts."""
    tokenizer_dir: str = host_path_field()
    """Tokenizer directory; empty = the one stored with the base model (``final/`` or ``tokenizer/``)."""
    seq_len: int = 512
    """Positions per row; longer conversations are cut at the end. At most the model's max_seq_len."""
    micro_batch_size: int = 8
    """Rows per forward/backward on one rank."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step over ALL ranks (as in pretraining: a multiple of the world size)."""
    packing: bool = True
    """Pack several conversations per row (attention kept apart by doc ids); false = one per row, padded."""
    bos: bool = False
    """Start each conversation with BOS (match how the base model's documents started)."""
    num_workers: int = runtime_field(0)
    """Background threads assembling batches."""

    def __post_init__(self) -> None:
        for name in ("seq_len", "micro_batch_size", "grad_accum_steps"):
            if getattr(self, name) < 1:
                raise KilnError(f"train config: data.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class LoRASection:
    rank: int = 0
    """Adapter rank; 0 = full fine-tuning (every weight trains)."""
    alpha: float = 16.0
    """Adapter output scale is alpha / rank (keeps the update size steady when the rank changes)."""
    dropout: float = 0.05
    """Dropout on the adapter's input (training only)."""
    targets: tuple[str, ...] = DEFAULT_TARGETS
    """Linear layers that get adapters: any of wq wk wv wo w1 w2 w3 output."""

    def __post_init__(self) -> None:
        if self.rank < 0 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise KilnError(f"train config: lora needs rank >= 0, alpha > 0, 0 <= dropout < 1; got {self}")


@dataclass(frozen=True)
class FinetuneConfig:
    """A fine-tuning run: `python -m trainer.sft --config cfg.toml key=value ...`.

    optim/schedule/checkpoint/run are the pretraining sections (`trainer.config`); give
    fine-tuning values explicitly (configs/sft/*.toml): e.g. lr 2e-5 full, 2e-4 LoRA.
    """

    base: BaseSection = field(default_factory=BaseSection)
    data: ChatDataSection = field(default_factory=ChatDataSection)
    lora: LoRASection = field(default_factory=LoRASection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        if self.schedule.warmup_steps and self.schedule.warmup_steps >= self.run.steps:
            raise KilnError(f"train config: schedule.warmup_steps ({self.schedule.warmup_steps}) "
                            f"must be < run.steps ({self.run.steps})")

    @property
    def rows_per_step(self) -> int:
        return self.data.micro_batch_size * self.data.grad_accum_steps


# -- base model ---------------------------------------------------------------------------------
def tokenizer_dir_for(cfg: FinetuneConfig) -> Path:
    """`data.tokenizer_dir`, else the tokenizer stored with the base model."""
    if cfg.data.tokenizer_dir:
        return Path(cfg.data.tokenizer_dir)
    return find_tokenizer_dir(cfg.base.dir)


def build_finetune_model(cfg: FinetuneConfig, dist: DistEnv) -> tuple[nn.Module, Llama, ModelConfig]:
    """The base model with adapters (if any), parallelized like pretraining, weights loaded.

    Built on the meta device as in `trainer.parallelize.build_model`; the base weights are
    then loaded into the materialized (or FSDP-sharded) parameters.
    """
    if not cfg.base.dir:
        raise KilnError("train config: base.dir is empty; point it at a pretrain artifact or an HF model dir")
    state, model_cfg = load_weights(model_dir(cfg.base.dir))
    if cfg.data.seq_len > model_cfg.max_seq_len:
        raise KilnError(f"train config: data.seq_len ({cfg.data.seq_len}) exceeds the base model's "
                        f"max_seq_len ({model_cfg.max_seq_len})")
    torch.manual_seed(cfg.run.seed)
    with torch.device("meta"):
        raw = Llama(model_cfg)
        if cfg.lora.rank:
            apply_lora(raw, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets)
    model = parallelize(raw, cfg.run, dist) if dist.mode == "fsdp" else raw
    raw.to_empty(device=dist.device)
    with torch.no_grad():
        raw.init_weights()  # RoPE tables; the weights are overwritten below
    reset_lora_parameters(raw)
    if dist.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, cast(Any, state), options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        missing, unexpected = raw.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith((".lora_A", ".lora_B"))]
        if missing or unexpected:
            raise KilnError(f"{cfg.base.dir}: weights do not fit its config: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}")
        model = parallelize(raw, cfg.run, dist)
    return model, raw, model_cfg


# -- export -------------------------------------------------------------------------------------
def save_adapter(weights: dict[str, Tensor], lora: LoRASection, out: Path) -> None:
    """Adapters alone (small enough to share), with the settings needed to apply them again."""
    adapters = {k: v.contiguous() for k, v in weights.items() if k.endswith((".lora_A", ".lora_B"))}
    out.mkdir(parents=True, exist_ok=True)
    save_file(adapters, str(out / "adapter.safetensors"))
    atomic_write_text(out / "adapter_config.json", json.dumps(dataclasses.asdict(lora), indent=2))


# -- the shared half of the SFT and DPO recipes ---------------------------------------------------
F = TypeVar("F", bound=FinetuneConfig)


class FinetuneRecipe(Recipe[F]):
    """Base model (+ LoRA) and chat-row batches; subclasses load their data and define loss and validation."""

    @abstractmethod
    def load_data(self, tokenizer: Tokenizer) -> ChatDataset | PreferenceDataset:
        """Read the data artifact; returns the training set (a subclass keeps its val set itself)."""

    def build(self) -> Parts:
        cfg, dist = self.cfg, self.dist
        self.tokenizer_dir = tokenizer_dir_for(cfg)
        tokenizer = Tokenizer.load(self.tokenizer_dir)
        train_set = self.load_data(tokenizer)
        model, raw, model_cfg = build_finetune_model(cfg, dist)
        if tokenizer.vocab_size > model_cfg.vocab_size:
            raise KilnError(f"tokenizer has {tokenizer.vocab_size} ids but the base model's vocab_size is "
                            f"{model_cfg.vocab_size}; use the tokenizer the base model was trained with")
        loader = chat_loader(train_set, cfg.data.micro_batch_size, seed=cfg.run.seed, rank=dist.rank,
                             world_size=dist.world_size, num_workers=cfg.data.num_workers)
        self.parts = Parts(model, raw, model_cfg, loader)
        return self.parts

    def export(self, weights: dict[str, Tensor], out_dir: Path, state: TrainState) -> None:
        """``adapter/`` (LoRA), merged weights in ``final/``, and the tokenizer in ``tokenizer/``."""
        lora = self.cfg.lora
        if lora.rank:
            save_adapter(weights, lora, out_dir / "adapter")
            weights = merge_lora_state_dict(weights, lora.alpha / lora.rank)
        export_final(weights, self.parts.model_cfg, out_dir / "final", dtype=self.cfg.checkpoint.export_dtype,
                     extra={"kind": self.kind, "step": state.step, "tokens_seen": state.tokens_seen})
        copy_tokenizer(self.tokenizer_dir, out_dir / "tokenizer")

    def summary_fields(self) -> dict[str, Any]:
        return {"lora_rank": self.cfg.lora.rank, "adapter_dir": "adapter" if self.cfg.lora.rank else None}
