"""Trainer test fixtures: tiny token shards written with the real shard writer, and a run helper.

`pattern_data` is learnable: each document is an arithmetic progression of token
ids (random start and stride), so the next token follows from the previous two and
a debug model's loss falls fast. `numbered_data` counts up (0, 1, 2, ...) so every
window is identified by its first token.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from model import Llama
from model.presets import get_preset
from model.tokenizer import Tokenizer
from storage.store import open_store
from storage.token_shards import write_token_shard
from tasks.sft_data import DPODataConfig, SFTDataConfig, prepare_dpo, prepare_sft
from tests.tasks.test_sft_data import DEMO_DPO, DEMO_SFT, raw_artifact
from trainer.checkpoint import export_final
from trainer.loop import RUN_LOGS

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


def content_digests(run_dir: Path) -> dict[str, str]:
    """sha256 of every file of a run directory that is not a run log (`trainer.loop.RUN_LOGS`)."""
    found = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if p.is_file() and not any(fnmatch.fnmatchcase(rel, pattern) for pattern in RUN_LOGS):
            found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def fresh_process_rngs() -> None:
    """Reseed Python's and numpy's global RNGs from OS entropy, as every new interpreter does: an
    in-process run then starts where a separately launched trainer would (torch's starts fixed)."""
    random.seed()
    np.random.seed()


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


# ---------------------------------------------------------------- fine-tuning inputs (SFT, DPO and the loop tests)
def write_base(base_dir: Path, tokenizer_dir: Path) -> Path:
    """A pretrain-like artifact: random debug weights sized for the tokenizer, tokenizer files in final/."""
    torch.manual_seed(0)
    cfg = get_preset("debug", vocab_size=Tokenizer.load(tokenizer_dir).model_vocab_size)
    final = export_final(Llama(cfg).state_dict(), cfg, base_dir / "final")
    for name in ("tokenizer.model", "tokenizer_meta.json"):
        (final / name).write_bytes((tokenizer_dir / name).read_bytes())
    return base_dir


@pytest.fixture(scope="session")
def sft_setup(tmp_path_factory, chat_tokenizer_dir) -> dict[str, Path]:
    """The base model and the demo SFT artifact."""
    root = tmp_path_factory.mktemp("sft")
    store = open_store(root / "store")
    data = prepare_sft(raw_artifact(store, DEMO_SFT), SFTDataConfig(val_fraction=0.2), store)
    return {"base": write_base(root / "base", chat_tokenizer_dir), "data": data.path}


def sft_args(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """A ~2 s CPU run: 30 steps of 4 packed rows of 96 positions, lr 3e-3, checkpoints every 10."""
    return [f"base.dir={setup['base']}", f"data.dir={setup['data']}", f"run.out_dir={out}",
            "data.seq_len=96", "data.micro_batch_size=4", "run.steps=30", "run.log_every=1", "run.val_every=10",
            "run.val_batches=2", "run.device=cpu", "schedule.warmup_steps=3", "optim.lr=3e-3", "optim.min_lr=3e-4",
            "optim.weight_decay=0.0", "checkpoint.every_steps=10", "checkpoint.keep_last=2", *extra]


@pytest.fixture(scope="session")
def dpo_setup(tmp_path_factory, chat_tokenizer_dir) -> dict[str, Path]:
    """The base model and the demo DPO artifact."""
    root = tmp_path_factory.mktemp("dpo")
    store = open_store(root / "store")
    data = prepare_dpo(raw_artifact(store, DEMO_DPO), DPODataConfig(val_fraction=0.25), store)
    return {"base": write_base(root / "base", chat_tokenizer_dir), "data": data.path}


def dpo_args(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [f"base.dir={setup['base']}", f"data.dir={setup['data']}", f"run.out_dir={out}", "data.seq_len=64",
            "data.micro_batch_size=4", "run.steps=16", "run.log_every=1", "run.val_every=8", "run.val_batches=2",
            "run.device=cpu", "schedule.warmup_steps=2", "optim.lr=2e-3", "optim.min_lr=2e-4",
            "optim.weight_decay=0.0", "dpo.beta=0.5", "checkpoint.every_steps=4", *extra]
