"""Autoregressive sampling from a `Llama`: greedy, temperature, top-k and top-p.

    ids = generate(model, tokenizer.encode("Once upon"), 50, temperature=0.8, top_k=40)
    for tok in stream_generate(model, prompt, 200, eos_id=tokenizer.eos_id):
        print(tokenizer.decode([tok]), end="", flush=True)

With the KV cache (default) each step feeds one token; without it every step
re-runs the whole context, cropped to the last max_seq_len tokens (a sliding
window, so it can generate past max_seq_len). Both give the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from kiln.errors import KilnError
from model.llama import Llama


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Pick one token id per row of logits [..., vocab] -> LongTensor [...].

    temperature 0 is greedy (argmax). top_k keeps the k likeliest tokens; top_p keeps the
    smallest set of likeliest tokens whose probability mass reaches p (nucleus sampling).
    Draws come from `generator` (on its device) so a seed reproduces a sample."""
    if temperature < 0:
        raise KilnError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise KilnError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise KilnError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0 or top_k == 1:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token once the likelier tokens before it already hold top_p of the mass.
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    if generator is not None:
        probs = probs.to(generator.device)
    ids = torch.multinomial(probs.reshape(-1, probs.size(-1)), 1, generator=generator)
    return ids.view(probs.shape[:-1]).to(logits.device)


def _prompt_ids(prompt: list[int] | Tensor) -> list[int]:
    if isinstance(prompt, Tensor):
        if prompt.dim() > 2 or (prompt.dim() == 2 and prompt.size(0) != 1):
            raise KilnError(f"prompt tensor must be [T] or [1, T], got shape {tuple(prompt.shape)}")
        prompt = prompt.flatten().tolist()
    ids = [int(t) for t in prompt]
    if not ids:
        raise KilnError("prompt is empty: generation needs at least one token (e.g. BOS)")
    return ids


@torch.no_grad()
def stream_generate(model: Llama, prompt: list[int] | Tensor, max_new_tokens: int, *,
                    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                    eos_id: int | None = None, use_kv_cache: bool = True,
                    generator: torch.Generator | None = None) -> Iterator[int]:
    """Yield up to max_new_tokens new token ids, one at a time; stops after yielding eos_id."""
    ids = _prompt_ids(prompt)
    device, max_len = model.tok_embeddings.weight.device, model.cfg.max_seq_len

    def pick(logits: Tensor) -> int:
        return int(sample_next(logits[0, -1], temperature, top_k, top_p, generator))

    if use_kv_cache:
        if len(ids) + max_new_tokens > max_len:
            raise KilnError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                            f"max_seq_len ({max_len}); shorten them or pass use_kv_cache=False to slide the window")
        cache = model.make_kv_cache(1, len(ids) + max_new_tokens)
        logits, _ = model(torch.tensor([ids], device=device), kv_cache=cache)
        for step in range(max_new_tokens):
            tok = pick(logits)
            yield tok
            if tok == eos_id or step == max_new_tokens - 1:
                return
            logits, _ = model(torch.tensor([[tok]], device=device), kv_cache=cache, start_pos=len(ids) + step)
    else:
        for _ in range(max_new_tokens):
            logits, _ = model(torch.tensor([ids[-max_len:]], device=device))
            tok = pick(logits)
            ids.append(tok)
            yield tok
            if tok == eos_id:
                return


def generate(model: Llama, prompt: list[int] | Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             use_kv_cache: bool = True, generator: torch.Generator | None = None) -> list[int]:
    """prompt + the generated ids (ending with eos_id if it was produced). temperature 0 = greedy."""
    new = stream_generate(model, prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                          eos_id=eos_id, use_kv_cache=use_kv_cache, generator=generator)
    return _prompt_ids(prompt) + list(new)
