"""Chat data for fine-tuning: tokenize conversations with loss masks, pack them into rows, batch them.

    ids, labels = encode_chat(tokenizer, messages)     # labels = -100 except assistant replies
    ds = ChatDataset(read_split(sft_artifact, "train"), tokenizer, seq_len=512, packing=True)
    loader = chat_loader(ds, micro_batch_size=8, seed=0)  # resumable: loader.state_dict()
    x, y, doc_ids = next(loader)                          # model(x, y, doc_ids=doc_ids)

Masks: only an assistant's content and its closing ``<|im_end|>`` carry loss;
system and user text, role headers and padding have label -100 (`IGNORE_INDEX`).
Targets are shifted inside each conversation (``x = ids[:-1]``, ``y = labels[1:]``),
so no position is ever asked to predict the next conversation's first token.

Packing: conversations are laid into rows of ``seq_len`` positions once, by
best-fit-decreasing (deterministic, ~95 %+ full rows on typical chat data), and
``doc_ids`` number the conversations of a row so attention stays inside each one
(RoPE only sees relative positions, so a packed conversation computes what it
would alone). Without packing, each conversation has a row of its own, padded.
Conversations longer than a row are cut at the end; one left without any
assistant token is dropped and counted.

Batches come from `trainer.data.TokenLoader` (the pretraining loader): rows are
shuffled per epoch from ``(seed, epoch)``, sliced per rank, and its
``state_dict()`` resumes at exactly the next batch. The SFT sets this serves are
small next to pretraining corpora, so the token ids are held in memory.

Artifact layout read here (written by `tasks.sft_data`): ``<artifact>/{train,val}/part-*.parquet``
with columns id, source, format, messages (JSON), n_turns — or, for preference data,
id, source, prompt (JSON messages), chosen, rejected.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import Tensor

from kiln.chat import Message, chat_segments, check_chat_tokens
from kiln.errors import KilnError
from model.llama import IGNORE_INDEX
from trainer.data import TokenLoader

SPLITS = ("train", "val")
PART_GLOB = "part-*.parquet"
META_FILE = "sft_meta.json"


# ---------------------------------------------------------------- reading the artifact
def split_files(artifact_dir: str | Path, split: str) -> list[Path]:
    """The Parquet parts of one split, in order (an empty list if the split is empty)."""
    d = Path(artifact_dir)
    if not (d / META_FILE).is_file():
        raise KilnError(f"{d}: not a chat data artifact ({META_FILE} missing); run the sft_data stage")
    return sorted((d / split).glob(PART_GLOB))


def read_split(artifact_dir: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """All records of a split, JSON columns decoded (``messages`` / ``prompt`` become lists)."""
    rows: list[dict[str, Any]] = []
    for path in split_files(artifact_dir, split):
        for row in pq.read_table(path).to_pylist():
            for key in ("messages", "prompt"):
                if key in row:
                    row[key] = json.loads(row[key])
            rows.append(row)
    return rows


# ---------------------------------------------------------------- tokenizing
def encode_chat(tokenizer: Any, messages: Sequence[Message], *, train_on: Literal["all", "last"] = "all",
                bos: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and, position for position, the ids to learn (-100 elsewhere).

    `train_on="last"` learns only the final assistant reply (DPO scores just that one).
    """
    check_chat_tokens(tokenizer)
    ids = [tokenizer.bos_id] if bos else []
    labels = [IGNORE_INDEX] * len(ids)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant") if train_on == "last" else -1
    for i, message in enumerate(messages):
        for text, learn in chat_segments([message]):
            piece = tokenizer.encode(text)
            ids += piece
            learn = learn and (train_on == "all" or i == last)
            labels += piece if learn else [IGNORE_INDEX] * len(piece)
    return ids, labels


def shift(ids: Sequence[int], labels: Sequence[int], seq_len: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Inputs ``ids[:-1]`` and targets ``labels[1:]``, cut to `seq_len`; None if no target is left."""
    x = np.asarray(ids[:-1][:seq_len], dtype=np.int64)
    y = np.asarray(labels[1:][:seq_len], dtype=np.int64)
    return (x, y) if len(x) and (y != IGNORE_INDEX).any() else None


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing of items into rows of `capacity`; each row lists item indices.

    Deterministic (ties by index), O(n log n) lookups; items must each fit a row.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # (space left, row), sorted
    rows: list[list[int]] = []
    for i in order:
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at == len(free):
            rows.append([i])
            space, row = capacity - lengths[i], len(rows) - 1
        else:
            space, row = free.pop(at)
            rows[row].append(i)
            space -= lengths[i]
        if space > 0:
            bisect.insort(free, (space, row))
    return [sorted(r) for r in rows]


# ---------------------------------------------------------------- datasets
class ChatDataset:
    """Tokenized conversations laid out in rows of `seq_len` positions; `batch` gives (x, y, doc_ids)."""

    def __init__(self, records: Sequence[dict[str, Any]], tokenizer: Any, seq_len: int, *, packing: bool = True,
                 bos: bool = False, name: str = "sft data") -> None:
        self.split_dir = name  # TokenLoader names its data in errors by this attribute
        self.seq_len, self.packing = seq_len, packing
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id >= 0 else tokenizer.eos_id
        self.examples: list[tuple[np.ndarray, np.ndarray]] = []
        self.dropped = 0
        for record in records:
            pair = shift(*encode_chat(tokenizer, record["messages"], bos=bos), seq_len)
            if pair is None:
                self.dropped += 1
            else:
                self.examples.append(pair)
        if not self.examples:
            raise KilnError(f"{name}: no conversation with an assistant reply fits seq_len={seq_len}")
        lengths = [len(x) for x, _ in self.examples]
        self.rows = pack_rows(lengths, seq_len) if packing else [[i] for i in range(len(lengths))]
        self.n_tokens = sum(lengths)
        self.n_targets = int(sum((y != IGNORE_INDEX).sum() for _, y in self.examples))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def fill(self) -> float:
        """Share of row positions holding real tokens (1.0 = no padding)."""
        return self.n_tokens / (len(self.rows) * self.seq_len)

    def row(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x, y and doc ids of row `index`; padding has the pad id, label -100 and doc id -1."""
        x = np.full(self.seq_len, self.pad_id, dtype=np.int64)
        y = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64)
        docs = np.full(self.seq_len, -1, dtype=np.int64)
        at = 0
        for j, item in enumerate(self.rows[index]):
            ex, ey = self.examples[item]
            x[at: at + len(ex)], y[at: at + len(ey)], docs[at: at + len(ex)] = ex, ey, j
            at += len(ex)
        return x, y, docs

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor, Tensor | None]:
        """Inputs, targets and (when packing) doc ids, each ``[len(indices), seq_len]`` int64."""
        rows = [self.row(int(i)) for i in indices]
        x, y, docs = (torch.from_numpy(np.stack(parts)) for parts in zip(*rows, strict=True))
        # Unpacked rows hold one conversation followed by padding that nothing attends to
        # (causal), so plain causal attention suffices and SDPA keeps its fastest kernel.
        return x, y, docs if self.packing else None


class PreferenceDataset:
    """DPO pairs: `batch` gives x, y ``[2B, seq_len]`` (chosen rows, then rejected rows) and pair indices.

    Only the final assistant reply carries labels, so summed label log-probs score that reply alone.
    """

    def __init__(self, records: Sequence[dict[str, Any]], tokenizer: Any, seq_len: int, *, bos: bool = False,
                 name: str = "preference data") -> None:
        self.split_dir, self.seq_len = name, seq_len
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id >= 0 else tokenizer.eos_id
        self.pairs: list[tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = []
        self.dropped = 0
        for record in records:
            encoded = [shift(*encode_chat(tokenizer, [*record["prompt"], {"role": "assistant", "content": reply}],
                                          train_on="last", bos=bos), seq_len)
                       for reply in (record["chosen"], record["rejected"])]
            if encoded[0] is None or encoded[1] is None:
                self.dropped += 1  # the prompt alone fills the row: nothing to compare
            else:
                self.pairs.append((encoded[0], encoded[1]))
        if not self.pairs:
            raise KilnError(f"{name}: no preference pair fits seq_len={seq_len}; raise data.seq_len")

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        idx = [int(i) for i in indices]
        rows = [self.pairs[i][0] for i in idx] + [self.pairs[i][1] for i in idx]
        x = np.full((len(rows), self.seq_len), self.pad_id, dtype=np.int64)
        y = np.full((len(rows), self.seq_len), IGNORE_INDEX, dtype=np.int64)
        for r, (ex, ey) in enumerate(rows):
            x[r, : len(ex)], y[r, : len(ey)] = ex, ey
        return torch.from_numpy(x), torch.from_numpy(y), torch.tensor(idx, dtype=torch.int64)


def chat_loader(dataset: ChatDataset | PreferenceDataset, micro_batch_size: int, *, seed: int, rank: int = 0,
                world_size: int = 1, num_workers: int = 0) -> TokenLoader:
    """The pretraining loader over chat rows: seeded per-epoch shuffle, rank slices, exact resume."""
    # TokenLoader only uses len(), batch() and split_dir, which both datasets provide.
    return TokenLoader(cast(Any, dataset), micro_batch_size, seed=seed, rank=rank, world_size=world_size,
                       num_workers=num_workers)
