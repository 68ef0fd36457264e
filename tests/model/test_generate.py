"""Tests for model.generate and the KV cache: cached and uncached decoding agree, sampling knobs work."""

from __future__ import annotations

import pytest
import torch

from kiln.errors import KilnError
from model import Llama, generate, get_preset, sample_next, stream_generate

PROMPT = [1, 17, 42, 7, 300]


@pytest.fixture(scope="module")
def model() -> Llama:
    torch.manual_seed(0)
    return Llama(get_preset("debug"))


def test_greedy_is_identical_with_and_without_cache(model: Llama) -> None:
    cached = generate(model, PROMPT, 30, temperature=0)
    uncached = generate(model, PROMPT, 30, temperature=0, use_kv_cache=False)
    assert cached[:5] == PROMPT and len(cached) == 35
    assert cached == uncached


@pytest.mark.parametrize("knobs", [{}, {"top_k": 20}, {"top_p": 0.9}, {"temperature": 0.7, "top_k": 50, "top_p": 0.95}])
def test_sampling_is_identical_with_and_without_cache_for_one_seed(model: Llama, knobs: dict) -> None:
    runs = [generate(model, PROMPT, 25, use_kv_cache=c, generator=torch.Generator().manual_seed(123), **knobs)
            for c in (True, False)]
    assert runs[0] == runs[1]
    again = generate(model, PROMPT, 25, generator=torch.Generator().manual_seed(123), **knobs)
    assert again == runs[0]


def test_stream_yields_the_new_tokens_of_generate(model: Llama) -> None:
    assert list(stream_generate(model, PROMPT, 10, temperature=0)) == generate(model, PROMPT, 10, temperature=0)[5:]


def test_tensor_prompt_is_accepted(model: Llama) -> None:
    ids = generate(model, torch.tensor([PROMPT]), 5, temperature=0)
    assert ids == generate(model, PROMPT, 5, temperature=0)


def test_generation_stops_after_eos(model: Llama) -> None:
    greedy = generate(model, PROMPT, 10, temperature=0)
    eos = greedy[7]  # the third new token
    for use_cache in (True, False):
        out = generate(model, PROMPT, 10, temperature=0, eos_id=eos, use_kv_cache=use_cache)
        assert out == greedy[: greedy.index(eos, 5) + 1]


def test_cache_path_refuses_to_pass_max_seq_len_but_sliding_window_does() -> None:
    torch.manual_seed(0)
    small = Llama(get_preset("debug", max_seq_len=16))
    with pytest.raises(KilnError, match="max_seq_len"):
        generate(small, PROMPT, 12)
    out = generate(small, PROMPT, 30, temperature=0, use_kv_cache=False)
    assert len(out) == 35


def test_kv_cache_overflow_is_a_clear_error(model: Llama) -> None:
    cache = model.make_kv_cache(batch=1, max_len=4)
    model(torch.tensor([PROMPT[:4]]), kv_cache=cache)
    with pytest.raises(KilnError, match="KV cache is full"):
        model(torch.tensor([[5]]), kv_cache=cache, start_pos=4)


def test_sample_next_greedy_and_truncation() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9, -1.0]]).repeat(2000, 1)
    assert (sample_next(logits, temperature=0) == 1).all()
    assert (sample_next(logits, top_k=1) == 1).all()
    assert (sample_next(logits, top_p=1e-6) == 1).all()
    g = torch.Generator().manual_seed(0)
    top2 = sample_next(logits, top_k=2, generator=g)
    assert set(top2.tolist()) == {1, 3}
    # probs ~ [.024, .474, .064, .429, .009]: top_p=0.8 keeps {1, 3} (mass .90); 0.95 adds token 2
    assert set(sample_next(logits, top_p=0.8, generator=g).tolist()) == {1, 3}
    assert set(sample_next(logits, top_p=0.95, generator=g).tolist()) == {1, 2, 3}
    assert set(sample_next(logits, generator=g).tolist()) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("bad", [{"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}])
def test_sample_next_rejects_bad_knobs(bad: dict) -> None:
    with pytest.raises(KilnError):
        sample_next(torch.zeros(1, 5), **bad)


def test_empty_prompt_is_an_error(model: Llama) -> None:
    with pytest.raises(KilnError, match="prompt is empty"):
        generate(model, [], 3)
