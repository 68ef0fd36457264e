"""The packed-token loader: windows and shifts, rank slices, exact resume, memmaps only, val order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.errors import KilnError
from trainer.data import PackedTokenDataset, TokenLoader, val_batches

T = 10


def take(loader: TokenLoader, n: int) -> list[torch.Tensor]:
    return [next(loader)[0] for _ in range(n)]


def test_windows_are_packed_and_shifted(numbered_data):
    ds = PackedTokenDataset(numbered_data, T)
    # (1000 - 1) // 10 = 99 windows in shard a, (700 - 1) // 10 = 69 in b; none spans the two.
    assert len(ds) == 99 + 69
    x, y = ds.batch([0, 5, 99, 167])
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (4, T)
    assert x[0].tolist() == list(range(0, 10)) and y[0].tolist() == list(range(1, 11))
    assert x[1].tolist() == list(range(50, 60))
    assert x[2].tolist() == list(range(1000, 1010))  # first window of shard b
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert y[3, -1].item() == 1690  # b's last 9 tokens (< T, EOS included) are dropped


def test_dataset_holds_memmaps_not_copies(numbered_data):
    ds = PackedTokenDataset(numbered_data, T)
    assert all(isinstance(s.tokens, np.memmap) for s in ds.shards)
    # Besides the memmaps it keeps one int64 per shard: memory does not grow with the corpus.
    assert ds.starts.nbytes == 8 * (len(ds.shards) + 1)
    loader = TokenLoader(ds, 4, seed=0, num_workers=2)
    take(loader, 3)
    assert loader.order(0).nbytes == 8 * len(ds)  # the documented O(n_sequences) int64 permutation
    loader.close()


def test_epoch_order_is_a_seeded_permutation(numbered_data):
    ds = PackedTokenDataset(numbered_data, T)
    a, b = TokenLoader(ds, 4, seed=1), TokenLoader(ds, 4, seed=1)
    assert np.array_equal(a.order(0), b.order(0))
    assert sorted(a.order(0).tolist()) == list(range(len(ds)))
    assert not np.array_equal(a.order(0), a.order(1))  # reshuffled every epoch
    assert not np.array_equal(a.order(0), TokenLoader(ds, 4, seed=2).order(0))


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_slices_are_disjoint_and_cover_the_global_batch(numbered_data, world_size):
    ds = PackedTokenDataset(numbered_data, T)
    single = TokenLoader(ds, 2 * world_size, seed=7)
    ranks = [TokenLoader(ds, 2, seed=7, rank=r, world_size=world_size) for r in range(world_size)]
    for _ in range(5):
        want = {row[0].item() for row in next(single)[0]}
        got = [{row[0].item() for row in next(loader)[0]} for loader in ranks]
        assert set().union(*got) == want
        assert sum(len(g) for g in got) == len(want)  # disjoint


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_dict_resume_gives_the_same_next_batches(numbered_data, num_workers):
    ds = PackedTokenDataset(numbered_data, T)
    straight = TokenLoader(ds, 8, seed=3, num_workers=num_workers)
    first = take(straight, 25)  # 25 * 8 > 168 sequences: crosses an epoch boundary
    state = straight.state_dict()
    expected = take(straight, 30)
    resumed = TokenLoader(ds, 8, seed=3, num_workers=num_workers)
    resumed.load_state_dict(state)
    assert state["epoch"] == 1
    assert all(torch.equal(a, b) for a, b in zip(take(resumed, 30), expected, strict=True))
    # Threads prefetch the very same batches as the training thread reads itself.
    plain = TokenLoader(ds, 8, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(take(plain, 25), first, strict=True))
    straight.close()
    resumed.close()


def test_resume_refuses_other_data(numbered_data):
    state = TokenLoader(PackedTokenDataset(numbered_data, T), 4, seed=0).state_dict()
    other = TokenLoader(PackedTokenDataset(numbered_data, T + 1), 4, seed=0)
    with pytest.raises(KilnError, match="other data or seed"):
        other.load_state_dict(state)


def test_val_batches_are_sequential_and_rank_sliced(numbered_data):
    ds = PackedTokenDataset(numbered_data, T)
    batches = list(val_batches(ds, 2, 3))
    assert [row[0].item() for x, _ in batches for row in x] == [0, 10, 20, 30, 40, 50]
    rank1 = list(val_batches(ds, 2, 3, rank=1, world_size=2))
    assert [row[0].item() for x, _ in rank1 for row in x] == [10, 30, 50, 70, 90, 110]
    assert len(list(val_batches(ds, 100, 5))) == 1  # capped by the split's 168 sequences


def test_too_little_data_is_a_clear_error(numbered_data, tmp_path):
    with pytest.raises(KilnError, match="lower data.seq_len"):
        PackedTokenDataset(numbered_data, 5000)
    with pytest.raises(KilnError, match="no token shards|no complete token shards"):
        PackedTokenDataset(tmp_path / "missing", T)
