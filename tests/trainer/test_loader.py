"""The packed-token loader: windows and shifts, rank slices, exact resume, memmaps only, val order, > 2**32 tokens."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import numpy as np
import pytest
import torch

from kiln.errors import KilnError
from storage.token_shards import TokenShardWriter
from tests.storage.sparse_shards import EOS, LAYOUTS, G, SparseShard, write_sparse_shard
from trainer.data import PackedTokenDataset, TokenLoader, to_device, val_batches

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


# -- per-source mixing weights ---------------------------------------------------------

B_START = 50_000  # source b's tokens start here, so a window's first token names its source


def write_source_shard(directory, source: str, tokens: list[int]) -> None:
    writer = TokenShardWriter(directory, vocab_size=100_000, eos_id=99_999)
    writer.add(tokens, source=source)
    writer.close()


@pytest.fixture
def two_sources(tmp_path):
    """Source ``a``: two shards of 1000 tokens (2 x 99 windows); ``b``: one of 500 (49 windows)."""
    write_source_shard(tmp_path / "a0", "a", list(range(0, 999)))
    write_source_shard(tmp_path / "a1", "a", list(range(1000, 1999)))
    write_source_shard(tmp_path / "b0", "b", list(range(B_START, B_START + 499)))
    return tmp_path


def share_of_a(batches: list[torch.Tensor]) -> float:
    firsts = torch.cat([x[:, 0] for x in batches])
    return (firsts < B_START).float().mean().item()


def test_mixing_weights_hold_within_tolerance(two_sources):
    ds = PackedTokenDataset(two_sources, T)
    assert len(ds) == 99 * 2 + 49  # naturally a is ~80 %; weight b up instead
    for weights, want in (({"a": 0.8, "b": 0.2}, 0.8), ({"a": 0.3, "b": 0.7}, 0.3)):
        loader = TokenLoader(ds, 10, seed=5, source_weights=weights)
        assert abs(share_of_a(take(loader, 50)) - want) < 0.05  # 500 samples
    # b (49 sequences) drawn ~350 times wraps: every sequence of an epoch once before any repeats.
    loader = TokenLoader(ds, 7, seed=5, source_weights={"a": 0.0, "b": 1.0})
    firsts = torch.cat([x[:, 0] for x in take(loader, 14)]).tolist()
    assert len(set(firsts[:49])) == 49 and set(firsts[49:98]) == set(firsts[:49])
    assert firsts[:49] != firsts[49:98]  # re-permuted per epoch


def test_mixing_is_seeded_and_rank_slices_stay_disjoint(two_sources):
    ds = PackedTokenDataset(two_sources, T)
    w = {"a": 0.5, "b": 0.5}
    a, b = TokenLoader(ds, 4, seed=1, source_weights=w), TokenLoader(ds, 4, seed=1, source_weights=w)
    first = take(a, 10)
    assert all(torch.equal(x, y) for x, y in zip(first, take(b, 10), strict=True))
    other = take(TokenLoader(ds, 4, seed=2, source_weights=w), 10)
    assert not all(torch.equal(x, y) for x, y in zip(first, other, strict=True))
    single = TokenLoader(ds, 6, seed=7, source_weights=w)
    ranks = [TokenLoader(ds, 2, seed=7, rank=r, world_size=3, source_weights=w) for r in range(3)]
    for _ in range(30):
        want = sorted(row[0].item() for row in next(single)[0])
        got = sorted(row[0].item() for loader in ranks for row in next(loader)[0])
        assert got == want  # same global round, split disjointly (as multisets)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_mixing_resume_gives_the_same_next_batches(two_sources, num_workers):
    ds = PackedTokenDataset(two_sources, T)
    w = {"a": 0.4, "b": 0.6}
    straight = TokenLoader(ds, 8, seed=3, num_workers=num_workers, source_weights=w)
    take(straight, 20)  # 160 samples: b (49 sequences) is past its first epoch
    state = straight.state_dict()
    assert state["sample"] == 160 and state["source_epochs"]["b"] >= 1
    expected = take(straight, 30)
    resumed = TokenLoader(ds, 8, seed=3, num_workers=num_workers, source_weights=w)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(take(resumed, 30), expected, strict=True))
    with pytest.raises(KilnError, match="source_weights"):
        TokenLoader(ds, 8, seed=3).load_state_dict(state)
    with pytest.raises(KilnError, match="source_weights"):
        TokenLoader(ds, 8, seed=3, source_weights={"a": 0.5, "b": 0.5}).load_state_dict(state)
    straight.close()
    resumed.close()


def test_mixing_refuses_unknown_missing_and_multi_source(two_sources, tmp_path_factory):
    ds = PackedTokenDataset(two_sources, T)
    with pytest.raises(KilnError, match=r"\['pile'\] absent"):
        TokenLoader(ds, 4, seed=0, source_weights={"a": 0.5, "b": 0.3, "pile": 0.2})
    with pytest.raises(KilnError, match=r"no weight for source\(s\) \['b'\]"):
        TokenLoader(ds, 4, seed=0, source_weights={"a": 1.0})
    mixed = tmp_path_factory.mktemp("mixed")
    writer = TokenShardWriter(mixed / "s0", vocab_size=100_000, eos_id=99_999)
    writer.add(list(range(100)), source="a")
    writer.add(list(range(100)), source="b")
    writer.close()
    with pytest.raises(KilnError, match="single-source shards"):
        TokenLoader(PackedTokenDataset(mixed, T), 4, seed=0, source_weights={"a": 1.0, "b": 1.0})


def test_empty_weights_keep_the_plain_order(two_sources):
    ds = PackedTokenDataset(two_sources, T)
    plain, empty = TokenLoader(ds, 8, seed=4), TokenLoader(ds, 8, seed=4, source_weights={})
    assert all(torch.equal(x, y) for x, y in zip(take(plain, 40), take(empty, 40), strict=True))
    assert empty.state_dict() == plain.state_dict() and "source_weights" not in plain.state_dict()


def test_source_weights_config_is_validated():
    from trainer.config import DataSection

    assert DataSection().source_weights == {}
    assert DataSection(source_weights={"a": 0.8, "b": 0.2}).source_weights == {"a": 0.8, "b": 0.2}
    with pytest.raises(KilnError, match="data.source_weights.b must be a finite number >= 0"):
        DataSection(source_weights={"a": 1.0, "b": -0.1})
    with pytest.raises(KilnError, match="data.source_weights must have a positive sum"):
        DataSection(source_weights={"a": 0.0})


def test_val_batches_of_a_split_smaller_than_one_round_are_smaller(numbered_data):
    ds = PackedTokenDataset(numbered_data, T)
    few = list(val_batches(ds, len(ds) + 10, 3))  # one micro-batch would need more rows than the split has
    assert [x.shape[0] for x, _ in few] == [len(ds)]
    per_rank = [list(val_batches(ds, len(ds), 3, rank=r, world_size=2)) for r in (0, 1)]
    assert [len(b) for b in per_rank] == [1, 1]  # every rank runs as many batches (FSDP's collectives)
    assert [int(b[0][0].shape[0]) for b in per_rank] == [len(ds) // 2] * 2


# -- more than 2**32 tokens (sparse shards: gigabytes apparent, kilobytes on disk) ---------------

T_BIG = 8192
SMALL = list(range(100, 100 + 3 * T_BIG))  # the third shard's tokens (EOS 99_999 follows)


@pytest.fixture
def big_split(sparse_dir) -> tuple[Path, list[SparseShard]]:
    """A uint16 shard of 2**33 + 20k tokens, a uint32 one of 2**32 + 20k, then a small real one."""
    specs = []
    for k, name in enumerate(sorted(LAYOUTS)):
        vocab, base, bounds, dense = LAYOUTS[name]
        specs.append(write_sparse_shard(sparse_dir / f"{k:05d}", bounds, dense, vocab_size=vocab, base=base,
                                        source=name))
    write_source_shard(sparse_dir / "00002", "small", SMALL)
    return sparse_dir, specs


def expected_window(specs: list[SparseShard], g: int) -> np.ndarray:
    """Global sequence `g`'s ``T_BIG + 1`` tokens, from the layouts alone (Python ints throughout)."""
    for spec in specs:
        count = (spec.n_tokens - 1) // T_BIG
        if g < count:
            return spec.expected(g * T_BIG, (g + 1) * T_BIG + 1)
        g -= count
    return np.array([*SMALL, 99_999])[g * T_BIG : (g + 1) * T_BIG + 1]


def assert_rows(x: torch.Tensor, y: torch.Tensor, specs: list[SparseShard], indices) -> None:
    for row, g in enumerate(indices):
        want = expected_window(specs, int(g))
        assert np.array_equal(x[row].numpy(), want[:-1]) and np.array_equal(y[row].numpy(), want[1:])


def test_windows_beyond_2_32_hold_the_exact_tokens(big_split):
    root, specs = big_split
    ds = PackedTokenDataset(root, T_BIG)
    counts = [(s.n_tokens - 1) // T_BIG for s in specs] + [3]
    assert ds.starts.tolist() == [0, counts[0], counts[0] + counts[1], sum(counts)]
    assert ds.n_tokens == 3 * G + 40_000 + 3 * T_BIG + 1
    c0, c1 = counts[0], counts[0] + counts[1]
    targets = [
        G // T_BIG - 1, G // T_BIG,  # uint16 shard: straddling 2**32, then from 2**32 on
        2 * G // T_BIG - 1, 2 * G // T_BIG, 2 * G // T_BIG + 1,  # ... straddling 2**33, beyond it
        c0 + 2**31 // T_BIG - 1, c0 + G // T_BIG - 1, c0 + G // T_BIG + 1,  # uint32 shard: 2**31, 2**32, beyond
        c1, c1 + 2,  # the small shard after them: the global index still lands on it
    ]
    for g in targets:
        assert (expected_window(specs, g) > EOS).sum() >= 50  # real tokens, not only a hole's zeros
    x, y = ds.batch(targets)
    assert_rows(x, y, specs, targets)
    assert x[-1, 0].item() == SMALL[2 * T_BIG] and y[-1, -1].item() == 99_999


def test_loader_draws_exact_batches_beyond_2_32_and_resumes_there(big_split):
    root, specs = big_split
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    ds = PackedTokenDataset(root, T_BIG)
    ranks = [TokenLoader(ds, 4, seed=11, rank=r, world_size=2, num_workers=2 * r) for r in range(2)]
    order = ranks[0].order(0)
    assert order.dtype == np.int64 and np.array_equal(order, ranks[1].order(0))
    beyond_2_33 = 2 * G // T_BIG + 1
    beyond_2_32_in_uint32 = (specs[0].n_tokens - 1) // T_BIG + G // T_BIG + 1
    for g in (beyond_2_33, beyond_2_32_in_uint32):
        pos = int(np.flatnonzero(order == g)[0])
        start = pos - pos % ranks[0].round  # the round (4 per rank x 2 ranks) that holds sequence g
        # The position as trainer_state.json carries it: plain JSON ints.
        state = json.loads(json.dumps({"epoch": 0, "position": start, "seed": 11, "n_sequences": len(ds)}))
        for r, loader in enumerate(ranks):
            loader.load_state_dict(state)
            x, y = next(loader)
            assert_rows(x, y, specs, order[start + r : start + 8 : 2])
            assert json.loads(json.dumps(loader.state_dict()))["position"] == start + 8
    for loader in ranks:
        loader.close()
    # Memmap slices only: no pass over the 32 GiB (apparent) of tokens.bin paged them in.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 512 * 1024


def test_to_device_keeps_a_strided_batch_view_as_it_is():
    data = torch.arange(2 * 9).view(2, 9)
    y = data[:, 1:]
    assert not y.is_contiguous()
    moved = to_device(y, torch.device("cpu"))
    assert torch.equal(moved, y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_device_copies_a_strided_view_from_pinned_memory_without_waiting():
    """The loader's y = data[:, 1:] is strided: it must still reach the GPU by a pinned, asynchronous copy
    (a pageable one synchronizes the stream first, which drains the queue every step)."""
    from torch.profiler import ProfilerActivity, profile

    data = torch.randint(0, 1000, (8, 2049))
    device = torch.device("cuda")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        moved = to_device(data[:, 1:], device)
        torch.cuda.synchronize()
    copies = [e.name for e in prof.events() if e.name.startswith("Memcpy HtoD")]
    assert copies and all("Pinned" in name for name in copies), copies
    assert torch.equal(moved.cpu(), data[:, 1:])
