"""Packed next-token batches read straight from memory-mapped token shards.

The corpus is a list of shards whose documents are already joined by EOS, so a
training sequence is any window of ``seq_len + 1`` consecutive tokens:
``x = tokens[i : i+T]``, ``y = tokens[i+1 : i+T+1]``. Each shard is cut into
``(n_tokens - 1) // T`` windows with stride ``T`` (the last < T tokens of a shard
are dropped, so no window spans two shards).

- `PackedTokenDataset` maps a global sequence index to its window. It holds only
  the shards' memmaps and a small int64 table of per-shard sequence counts.
- `TokenLoader` walks the sequences of an epoch in an order shuffled from
  ``(seed, epoch)``: a permutation of all sequence indices, which costs
  ``8 * n_sequences`` bytes (10B tokens at T=2048 -> 5M sequences -> 40 MB).
  Every rank computes the same order and takes its own strided slice of each
  global micro-batch round, so no rank reads the corpus and the global batch is
  the same set of sequences whatever the world size.
- Its `state_dict()` is ``(epoch, position)`` in global sequences, so a resumed run
  gets exactly the batch the interrupted one would have got next.
- With ``source_weights`` (`DataSection.source_weights`) the loader mixes sources
  instead: each shard belongs to the one source its manifest counts, every source
  gets its own seeded permutation per (source) epoch, and a seeded schedule drawn in
  blocks of `MIX_BLOCK` samples picks each global sample's source with those weights.
  All ranks compute the same global round and take strided slices, as above. A source
  that runs out wraps to its next epoch (a fresh permutation): upsampling a small
  source repeats its data. The state is the sample counter plus each source's
  (epoch, position).
- `val_batches` walks the val split in order (no shuffle): every validation pass
  sees the same sequences, so val losses are comparable across steps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.errors import KilnError
from storage.token_shards import TokenShard, list_shards


class PackedTokenDataset:
    """All ``seq_len + 1``-token windows of a split, addressable by a global index."""

    def __init__(self, split_dir: str | Path, seq_len: int) -> None:
        self.split_dir = Path(split_dir)
        self.seq_len = seq_len
        paths = list_shards(self.split_dir)
        if not paths:
            raise KilnError(f"{self.split_dir}: no complete token shards; run pretokenize or fix the data path")
        self.shards = [TokenShard.open(p) for p in paths]
        counts = np.array([max(0, (len(s.tokens) - 1) // seq_len) for s in self.shards], dtype=np.int64)
        # starts[k] = global index of shard k's first sequence; starts[-1] = total.
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if self.starts[-1] == 0:
            largest = max(len(s.tokens) for s in self.shards)
            raise KilnError(f"{self.split_dir}: no shard holds the {seq_len + 1} tokens one sequence needs "
                            f"(largest: {largest}); lower data.seq_len or add data")

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def n_tokens(self) -> int:
        return sum(len(s.tokens) for s in self.shards)

    def window(self, index: int) -> np.ndarray:
        """Tokens ``[i, i + seq_len + 1)`` of sequence `index` (a view into the memmap)."""
        index = int(index)  # a numpy uint64 meeting int64 promotes to float64 (inexact past 2**53)
        k = int(np.searchsorted(self.starts, index, side="right")) - 1
        offset = (index - int(self.starts[k])) * self.seq_len  # Python ints: token offsets pass 2**32
        return self.shards[k].tokens[offset : offset + self.seq_len + 1]

    def batch(self, indices: np.ndarray | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets ``[len(indices), seq_len]`` as int64 tensors."""
        rows = np.stack([self.window(int(i)) for i in indices]).astype(np.int64)
        data = torch.from_numpy(rows)
        return data[:, :-1], data[:, 1:]


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on `device` without stalling the loop: on CUDA from pinned, contiguous memory with
    ``non_blocking``. A loader's ``data[:, :-1]`` is a strided view; pinned as it is, its copy would
    still go through a pageable contiguous temporary, and a copy from pageable memory waits for the
    device's queue to drain first -- a per-step synchronize that lets the GPU idle while the host
    launches the next step."""
    if device.type != "cuda":
        return batch.to(device)
    return batch.contiguous().pin_memory().to(device, non_blocking=True)


MIX_BLOCK = 4096
"""Samples per block of the weighted source schedule (one seeded draw per block)."""


def shard_sources(dataset: PackedTokenDataset) -> list[str]:
    """The source of each shard: the single key of its manifest's ``tokens_per_source``."""
    sources = []
    for shard in dataset.shards:
        names = list(shard.manifest.get("tokens_per_source", {}))
        if len(names) != 1:
            raise KilnError(f"{shard.dir}: shard holds {len(names)} sources {names}; data.source_weights needs "
                            "single-source shards (the clean stage writes them: a shard never mixes input files)")
        sources.append(names[0])
    return sources


class TokenLoader:
    """Endless, resumable, rank-sliced iterator of shuffled micro-batches.

    One "round" is ``micro_batch_size * world_size`` consecutive sequences of the
    epoch's order; rank r takes every world_size-th of them starting at r. An
    epoch ends when fewer than a round of sequences is left (that tail is skipped).
    With `source_weights`, the round's sequences are drawn per source instead (see
    the module docstring); empty weights keep the plain order above, byte for byte.
    """

    def __init__(self, dataset: PackedTokenDataset, micro_batch_size: int, *, seed: int,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 source_weights: dict[str, float] | None = None) -> None:
        if not 0 <= rank < world_size:
            raise KilnError(f"data loader: rank {rank} outside world size {world_size}")
        self.dataset, self.micro_batch_size, self.seed = dataset, micro_batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.round = micro_batch_size * world_size
        if len(dataset) < self.round:
            raise KilnError(f"{dataset.split_dir}: {len(dataset)} sequences cannot fill one micro-batch round of "
                            f"{self.round} (micro_batch_size x world size); lower data.micro_batch_size")
        self.epoch, self.position = 0, 0
        self._order: np.ndarray | None = None
        self._order_epoch = -1
        self.num_workers = num_workers
        self._pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
        self._pending: deque[tuple[Any, Any, Future]] = deque()
        self.source_weights = dict(source_weights or {})
        if self.source_weights:
            self._init_mixing()

    # -- weighted source mixing --------------------------------------------------------

    def _init_mixing(self) -> None:
        shard_src = shard_sources(self.dataset)
        present = sorted(set(shard_src))
        unknown = sorted(set(self.source_weights) - set(present))
        if unknown:
            raise KilnError(f"{self.dataset.split_dir}: data.source_weights names source(s) {unknown} absent "
                            f"from the data; its sources are {present}")
        missing = [s for s in present if s not in self.source_weights]
        if missing:
            raise KilnError(f"{self.dataset.split_dir}: data.source_weights has no weight for source(s) {missing}; "
                            "list every source (weight 0 leaves one out)")
        weights = np.array([float(self.source_weights[s]) for s in present], dtype=np.float64)
        if not (weights >= 0).all() or weights.sum() <= 0:
            raise KilnError(f"data.source_weights must be >= 0 with a positive sum, got {self.source_weights}")
        self._sources = present
        self._p = weights / weights.sum()
        starts = self.dataset.starts
        self._source_seqs: list[np.ndarray] = []
        for name, w in zip(present, weights, strict=True):
            ks = [k for k, s in enumerate(shard_src) if s == name]
            seqs = np.concatenate([np.arange(starts[k], starts[k + 1], dtype=np.int64) for k in ks])
            if w > 0 and len(seqs) == 0:
                raise KilnError(f"{self.dataset.split_dir}: source {name!r} has weight {w} but no shard of it "
                                f"holds one full sequence of {self.dataset.seq_len + 1} tokens")
            self._source_seqs.append(seqs)
        self._source_perm: dict[tuple[int, int], np.ndarray] = {}
        self._block: tuple[int, np.ndarray] | None = None
        n = len(present)
        self._mix_cursor: tuple[int, tuple[int, ...], tuple[int, ...]] = (0, (0,) * n, (0,) * n)

    def _source_order(self, src: int, epoch: int) -> np.ndarray:
        """Source `src`'s global sequence indices in the shuffled order of its `epoch`."""
        key = (src, epoch)
        if key not in self._source_perm:
            for old in [k for k in self._source_perm if k[0] == src and k[1] < epoch - 1]:
                del self._source_perm[old]  # keep at most the previous epoch (prefetch may straddle)
            rng = np.random.default_rng([self.seed, epoch, src, 0x5EED])
            self._source_perm[key] = rng.permutation(self._source_seqs[src])
        return self._source_perm[key]

    def _schedule_block(self, block: int) -> np.ndarray:
        """The source of each global sample in `block` (`MIX_BLOCK` samples), the same on every rank."""
        if self._block is None or self._block[0] != block:
            rng = np.random.default_rng([self.seed, block, 0x313])
            self._block = (block, rng.choice(len(self._sources), size=MIX_BLOCK, p=self._p))
        return self._block[1]

    def _mixed_round(self, cursor: tuple[int, tuple[int, ...], tuple[int, ...]]) -> tuple[np.ndarray, Any]:
        """This rank's indices of the global round at `cursor`, and the cursor after it."""
        sample, positions, epochs = cursor
        pos, ep = list(positions), list(epochs)
        chunk = np.empty(self.round, dtype=np.int64)
        for j in range(self.round):
            g = sample + j
            src = int(self._schedule_block(g // MIX_BLOCK)[g % MIX_BLOCK])
            chunk[j] = self._source_order(src, ep[src])[pos[src]]
            pos[src] += 1
            if pos[src] == len(self._source_seqs[src]):
                pos[src], ep[src] = 0, ep[src] + 1
        return chunk[self.rank :: self.world_size], (sample + self.round, tuple(pos), tuple(ep))

    def _next_mixed(self) -> tuple[torch.Tensor, torch.Tensor]:
        cursor = self._mix_cursor
        if self._pool is None:
            indices, after = self._mixed_round(cursor)
            batch = self.dataset.batch(indices)
        else:
            if not self._pending or self._pending[0][0] != cursor:
                self._pending.clear()  # first call, or load_state_dict moved the cursor
                self._submit_mixed(cursor)
            while len(self._pending) < 2 * self.num_workers:
                self._submit_mixed(self._pending[-1][1])
            _, after, future = self._pending.popleft()
            batch = future.result()
        self._mix_cursor = after
        return batch

    def _submit_mixed(self, cursor: Any) -> None:
        assert self._pool is not None
        indices, after = self._mixed_round(cursor)
        self._pending.append((cursor, after, self._pool.submit(self.dataset.batch, indices)))

    # -- plain shuffled order ----------------------------------------------------------

    def order(self, epoch: int) -> np.ndarray:
        """The shuffled sequence indices of `epoch`, identical on every rank."""
        if self._order_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            # int64 whatever the platform's default int (numpy < 2 made it int32 on Windows); same draws
            self._order = rng.permutation(np.arange(len(self.dataset), dtype=np.int64))
            self._order_epoch = epoch
        assert self._order is not None
        return self._order

    def _indices(self, epoch: int, position: int) -> np.ndarray:
        """This rank's sequence indices of the round starting at `position` of `epoch`."""
        chunk = self.order(epoch)[position : position + self.round]
        return chunk[self.rank :: self.world_size]

    def _advance(self, epoch: int, position: int) -> tuple[int, int]:
        position += self.round
        if position + self.round > len(self.dataset):
            return epoch + 1, 0
        return epoch, position

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.source_weights:
            return self._next_mixed()
        if self._pool is None:
            batch = self.dataset.batch(self._indices(self.epoch, self.position))
        else:
            batch = self._next_prefetched()
        self.epoch, self.position = self._advance(self.epoch, self.position)
        return batch

    def _next_prefetched(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep `2 * num_workers` reads in flight; each is keyed by its position, so order is exact."""
        if not self._pending or self._pending[0][:2] != (self.epoch, self.position):
            self._pending.clear()  # first call, or load_state_dict moved the position
            self._submit(self.epoch, self.position)
        while len(self._pending) < 2 * self.num_workers:
            self._submit(*self._advance(*self._pending[-1][:2]))
        return self._pending.popleft()[2].result()

    def _submit(self, epoch: int, position: int) -> None:
        assert self._pool is not None
        indices = self._indices(epoch, position).copy()  # the order array may be replaced next epoch
        self._pending.append((epoch, position, self._pool.submit(self.dataset.batch, indices)))

    def state_dict(self) -> dict[str, Any]:
        """Where the next batch comes from; the same on every rank (positions are global)."""
        # Positions count global sequences, so they stay valid if the world size changes on resume.
        if self.source_weights:
            sample, positions, epochs = self._mix_cursor
            return {"sample": sample, "seed": self.seed, "n_sequences": len(self.dataset),
                    "source_weights": dict(self.source_weights),
                    "source_positions": dict(zip(self._sources, positions, strict=True)),
                    "source_epochs": dict(zip(self._sources, epochs, strict=True))}
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n_sequences": len(self.dataset)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["n_sequences"]) != len(self.dataset) or int(state["seed"]) != self.seed:
            raise KilnError(f"{self.dataset.split_dir}: checkpoint was made with other data or seed "
                            f"({state['n_sequences']} sequences, seed {state['seed']}); use the run's own data")
        if dict(state.get("source_weights") or {}) != self.source_weights:
            raise KilnError(f"{self.dataset.split_dir}: checkpoint was made with data.source_weights "
                            f"{state.get('source_weights') or {}}, this run has {self.source_weights}; "
                            "keep the run's own weights to resume")
        if self.source_weights:
            self._mix_cursor = (int(state["sample"]),
                                tuple(int(state["source_positions"][s]) for s in self._sources),
                                tuple(int(state["source_epochs"][s]) for s in self._sources))
            self._pending.clear()
            return
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if self.position + self.round > len(self.dataset):
            self.epoch, self.position = self.epoch + 1, 0
        self._pending.clear()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def val_batches(dataset: PackedTokenDataset, micro_batch_size: int, n_batches: int, *,
                rank: int = 0, world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first `n_batches` rank-sliced micro-batches of the split, in order (no shuffle).

    Stops early (on every rank alike) when the split holds fewer sequences. A split smaller
    than one micro-batch per rank (a small chat val split packs into a few rows) is still
    scored, in smaller batches, rather than skipped.
    """
    micro_batch_size = min(micro_batch_size, len(dataset) // world_size)
    if micro_batch_size < 1:
        return
    round_size = micro_batch_size * world_size
    n = min(n_batches, len(dataset) // round_size)
    for b in range(n):
        indices = np.arange(b * round_size + rank, (b + 1) * round_size, world_size, dtype=np.int64)
        yield dataset.batch(indices)
