"""Evaluate stage: a trained model's perplexity on held-out token shards and loss on held-out chats.

    ref = evaluate(model_ref, EvaluateConfig(), store, tokens=pretokenize_ref, chat=sft_data_ref)
    json.loads((ref.path / "eval.json").read_text())
    # {"val_loss": 3.91, "val_ppl": 49.9, "val_tokens": 51200, "sft_val_loss": 1.72, "sft_val_ppl": 5.58, ...}

- ``val_*``: next-token loss over the ``val/`` split of a pretokenize artifact, in
  windows of `seq_len` (the first `max_batches` batches, in order, so numbers from
  different models are comparable), averaged per token.
- ``sft_*``: loss per assistant token on the ``val`` split of a chat artifact (the
  ``train`` split if val is empty, flagged in the output), masked and packed as in SFT.

Either input may be left out. The model is any artifact with ``final/`` (pretrain,
sft, dpo) or a Hugging Face directory artifact; it runs in this process (CUDA when
available), which suits the models one evaluates on one device.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from kiln.config import runtime_field
from kiln.errors import KilnError
from model.loading import find_tokenizer_dir, load_model
from model.tokenizer import Tokenizer
from storage.atomic import atomic_write_text
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from tasks.stage import Stage, reported
from trainer.data import PackedTokenDataset, val_batches
from trainer.sft_data import ChatDataset, read_split, split_files

STAGE = "evaluate"
RESULT_FILE = "eval.json"


@dataclass(frozen=True)
class EvaluateConfig:
    """What to measure and how much of it (``[evaluate]``)."""

    seq_len: int = 0
    """Window length for perplexity and row length for chats; 0 = the model's max_seq_len."""
    max_batches: int = 50
    """Batches per measurement (bounds the cost on big val splits); 0 = all of them."""
    batch_size: int = 8
    """Sequences per forward pass (with max_batches it fixes how much data is scored)."""
    device: Literal["auto", "cpu", "cuda"] = runtime_field("auto")
    """auto = cuda when available."""

    def __post_init__(self) -> None:
        if self.seq_len < 0 or self.max_batches < 0 or self.batch_size < 1:
            raise KilnError(f"evaluate: seq_len and max_batches must be >= 0, batch_size >= 1; got {self}")


EVALUATE = Stage(STAGE, "1", EvaluateConfig, inputs=("model", "tokens", "chat"), optional=("tokens", "chat"))


def evaluate(model: ArtifactRef, cfg: EvaluateConfig, store: ArtifactStore, *, tokens: ArtifactRef | None = None,
             chat: ArtifactRef | None = None) -> ArtifactRef:
    """Score `model` on whichever held-out sets are given; the artifact holds ``eval.json``."""
    if tokens is None and chat is None:
        raise KilnError("evaluate: give a pretokenize artifact (tokens), a chat data artifact (chat), or both")
    return EVALUATE.produce(store, cfg, {"model": model, "tokens": tokens, "chat": chat},
                            lambda build: _evaluate_into(build, model, cfg, tokens, chat))


def _evaluate_into(build: Build, model_ref: ArtifactRef, cfg: EvaluateConfig, tokens: ArtifactRef | None,
                   chat: ArtifactRef | None) -> None:
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    model, model_cfg = load_model(model_ref.path, device)
    seq_len = cfg.seq_len or model_cfg.max_seq_len
    if seq_len > model_cfg.max_seq_len:
        raise KilnError(f"evaluate.seq_len ({seq_len}) exceeds the model's max_seq_len ({model_cfg.max_seq_len})")
    result: dict[str, Any] = {"model": str(model_ref), "seq_len": seq_len}
    if tokens is not None:
        result.update(token_perplexity(model, tokens, seq_len, cfg, device))
    if chat is not None:
        tokenizer = Tokenizer.load(find_tokenizer_dir(model_ref.path))
        result.update(chat_loss(model, tokenizer, chat, seq_len, cfg, device))
    atomic_write_text(build.dir / RESULT_FILE, json.dumps(result, indent=2))
    build.counts.update({k: v for k, v in result.items() if isinstance(v, (int, float))})


@torch.no_grad()
def token_perplexity(model: torch.nn.Module, tokens: ArtifactRef, seq_len: int, cfg: EvaluateConfig,
                     device: str) -> dict[str, Any]:
    """Per-token loss and perplexity over the first `max_batches` windows of the val split."""
    split = tokens.path / "val"
    if not split.is_dir() or not any(split.glob("*/manifest.json")):
        raise KilnError(f"{tokens.path}: no val/ token shards; set pretokenize.val_fraction > 0")
    dataset = PackedTokenDataset(split, seq_len)
    n_batches = cfg.max_batches or math.ceil(len(dataset) / cfg.batch_size)
    total, count = 0.0, 0
    for x, y in val_batches(dataset, min(cfg.batch_size, len(dataset)), n_batches):
        _, loss = model(x.to(device), y.to(device))
        total += float(loss) * y.numel()
        count += y.numel()
    loss = total / count
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": count}


@torch.no_grad()
def chat_loss(model: torch.nn.Module, tokenizer: Tokenizer, chat: ArtifactRef, seq_len: int, cfg: EvaluateConfig,
              device: str) -> dict[str, Any]:
    """Loss per assistant token on the chat artifact's val split (train if val is empty)."""
    split = "val" if split_files(chat.path, "val") else "train"
    dataset = ChatDataset(read_split(chat.path, split), tokenizer, seq_len, packing=True, name=f"{chat.path}/{split}")
    rows = range(len(dataset)) if not cfg.max_batches else range(min(len(dataset), cfg.max_batches * cfg.batch_size))
    total, count = 0.0, 0
    for start in range(0, len(rows), cfg.batch_size):
        x, y, docs = dataset.batch(list(rows[start:start + cfg.batch_size]))
        _, loss = model(x.to(device), y.to(device), doc_ids=None if docs is None else docs.to(device))
        n = int((y != -100).sum())
        total += float(loss) * n
        count += n
    loss = total / max(count, 1)
    return {"sft_val_loss": loss, "sft_val_ppl": math.exp(min(loss, 50.0)), "sft_val_tokens": count,
            "sft_split": split}


@EVALUATE.task
def evaluate_task(model: ArtifactRef, tokens: ArtifactRef | None, chat: ArtifactRef | None, cfg: EvaluateConfig,
                  store_root: str) -> ArtifactRef:
    """Prefect wrapper: cached by artifact key; `tokens` or `chat` may be None."""
    return reported(evaluate(model, cfg, open_store(store_root), tokens=tokens, chat=chat))
