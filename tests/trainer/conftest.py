"""Trainer test fixtures: tiny token shards written with the real shard writer, and a run helper.

`pattern_data` is learnable: each document is an arithmetic progression of token
ids (random start and stride), so the next token follows from the previous two and
a debug model's loss falls fast. `numbered_data` counts up (0, 1, 2, ...) so every
window is identified by its first token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from storage.token_shards import write_token_shard

VOCAB = 512  # the debug preset's vocab
EOS = 0


def pattern_docs(rng: np.random.Generator, n_docs: int) -> list[list[int]]:
    docs = []
    for _ in range(n_docs):
        start, stride, length = rng.integers(1, VOCAB), rng.integers(1, 4), rng.integers(16, 96)
        docs.append([int(1 + (start + stride * i) % (VOCAB - 1)) for i in range(length)])
    return docs


def write_pattern_split(split_dir: Path, n_shards: int, docs_per_shard: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for s in range(n_shards):
        write_token_shard(split_dir / f"shard-{s:05d}", pattern_docs(rng, docs_per_shard), vocab_size=VOCAB,
                          eos_id=EOS)
    return split_dir


@pytest.fixture(scope="session")
def pattern_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/train`` (3 shards, ~16k tokens) and ``<root>/val`` (1 shard) of learnable documents."""
    root = tmp_path_factory.mktemp("pattern-tokens")
    write_pattern_split(root / "train", n_shards=3, docs_per_shard=100, seed=0)
    write_pattern_split(root / "val", n_shards=1, docs_per_shard=40, seed=1)
    return root


@pytest.fixture(scope="session")
def numbered_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards ``a`` (0..998 + EOS) and ``b`` (1000..1698 + EOS): a window's first token names it."""
    root = tmp_path_factory.mktemp("numbered-tokens")
    write_token_shard(root / "a", [list(range(0, 999))], vocab_size=100_000, eos_id=99_999)
    write_token_shard(root / "b", [list(range(1000, 1699))], vocab_size=100_000, eos_id=99_999)
    return root


def train_args(data: Path, out_dir: Path, *extra: str) -> list[str]:
    """Overrides for a ~1 s debug run: 20 steps of 4x2 sequences of 32 tokens, checkpoints every 5."""
    return [
        f"data.train_dir={data / 'train'}", f"data.val_dir={data / 'val'}", f"run.out_dir={out_dir}",
        "data.seq_len=32", "data.micro_batch_size=4", "data.grad_accum_steps=2",
        "run.steps=20", "run.log_every=1", "run.val_every=5", "run.val_batches=2", "run.device=cpu",
        "schedule.warmup_steps=2", "optim.lr=3e-3", "optim.min_lr=3e-4",
        "checkpoint.every_steps=5", "checkpoint.keep_last=2", *extra,
    ]


def train_losses(out_dir: Path) -> list[float]:
    lines = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in lines if m["kind"] == "train"]


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny ops on a shared 2-core box run faster (and steadier) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
