"""``kiln generate`` and ``kiln chat``: stream text from a model directory with a KV cache.

`generate_text` completes a prompt (plain, or as one chat reply); `chat_loop` is the
terminal REPL. They load a model directory (a training artifact, its ``final/``, or a
Hugging Face export) through `model.loading`. No Prefect here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import torch

from kiln.chat import IM_END, Message, check_chat_tokens, encode_prompt
from kiln.errors import KilnError
from model.generate import stream_generate
from model.loading import find_tokenizer_dir, generation_settings, load_model, load_tokenizer, prompt_prefix


class ChatSession:
    """A loaded model + tokenizer and the conversation so far; `reply` streams the next answer."""

    def __init__(self, model_dir: str | Path, *, tokenizer_dir: str | Path | None = None, system_prompt: str = "",
                 device: str = "cpu", seed: int | None = None) -> None:

        self.model, self.cfg = load_model(model_dir, device)
        self.tokenizer = load_tokenizer(tokenizer_dir or find_tokenizer_dir(model_dir))
        self.bos = bool(generation_settings(model_dir).get("chat_bos", False))  # as the SFT data was encoded
        self.stop_ids = {check_chat_tokens(self.tokenizer)[IM_END], self.tokenizer.eos_id}
        self.system_prompt = system_prompt
        self.generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
        self.messages: list[Message] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []

    def _prompt(self, max_new_tokens: int) -> tuple[list[int], int]:
        """Prompt ids that leave room for the answer, dropping the oldest turns when the context is full."""
        limit = self.cfg.max_seq_len
        while True:
            ids = encode_prompt(self.tokenizer, self.messages, bos=self.bos)
            keep_system = 1 if self.messages and self.messages[0]["role"] == "system" else 0
            if len(ids) + max_new_tokens <= limit or len(self.messages) - keep_system <= 1:
                break
            del self.messages[keep_system: keep_system + 2]  # the oldest user/assistant pair
        if len(ids) >= limit:
            raise KilnError(f"the message is {len(ids)} tokens but the model's context is {limit}; shorten it")
        return ids, min(max_new_tokens, limit - len(ids))

    def reply(self, user_text: str, *, max_new_tokens: int = 256, temperature: float = 0.7,
              top_k: int | None = 50, top_p: float | None = 0.9) -> Iterator[str]:
        """Stream the assistant's answer to `user_text` as text pieces; the answer joins the history."""
        self.messages.append({"role": "user", "content": user_text})
        ids, budget = self._prompt(max_new_tokens)
        pieces = self._stream(ids, budget, temperature, top_k, top_p)
        answer = []
        for piece in pieces:
            answer.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(answer)})

    def _stream(self, ids: list[int], budget: int, temperature: float, top_k: int | None,
                top_p: float | None) -> Iterator[str]:

        yield from stream_text(self.tokenizer, stream_generate(
            self.model, ids, budget, temperature=temperature, top_k=top_k, top_p=top_p,
            eos_id=check_chat_tokens(self.tokenizer)[IM_END], generator=self.generator), self.stop_ids)


def stream_text(tokenizer: Any, token_ids: Iterator[int], stop_ids: set[int]) -> Iterator[str]:
    """Turn a stream of ids into text pieces, holding back incomplete UTF-8 byte sequences.

    Special and chat tokens (``<|im_end|>``, ``<s>``, …) are not text: they are left out,
    as Hugging Face's ``decode(..., skip_special_tokens=True)`` does.
    """
    hidden = set(tokenizer.special_tokens.values())
    out: list[int] = []
    shown = ""
    for tok in token_ids:
        if tok in stop_ids:
            break
        if tok in hidden:
            continue
        out.append(tok)
        text = tokenizer.decode(out)
        if text.endswith("\ufffd"):  # a multi-byte character split over byte-fallback tokens
            continue
        yield text[len(shown):]
        shown = text
    text = tokenizer.decode(out)
    if len(text) > len(shown):
        yield text[len(shown):]


def generate_text(model_dir: str | Path, prompt: str, *, tokenizer_dir: str | Path | None = None,
                  chat: bool = False, system_prompt: str = "", max_new_tokens: int = 128,
                  temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None,
                  seed: int | None = None, device: str = "cpu", stream: TextIO | None = None) -> str:
    """Complete `prompt` (a plain continuation, or with `chat` one assistant reply); optionally
    echo the pieces to `stream` as they are produced. Returns the generated text."""
    if chat:
        session = ChatSession(model_dir, tokenizer_dir=tokenizer_dir, system_prompt=system_prompt,
                              device=device, seed=seed)
        pieces = session.reply(prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                               top_k=top_k, top_p=top_p)
    else:
        pieces = _complete(model_dir, prompt, tokenizer_dir, max_new_tokens, temperature, top_k, top_p, seed, device)
    out = []
    for piece in pieces:
        out.append(piece)
        if stream is not None:
            stream.write(piece)
            stream.flush()
    return "".join(out)


def _complete(path: str | Path, prompt: str, tokenizer_dir: str | Path | None, max_new_tokens: int,
              temperature: float, top_k: int | None, top_p: float | None, seed: int | None,
              device: str) -> Iterator[str]:

    model, cfg = load_model(path, device)
    tok = load_tokenizer(tokenizer_dir or find_tokenizer_dir(path))
    ids = [*prompt_prefix(path, tok), *tok.encode(prompt)]
    budget = min(max_new_tokens, cfg.max_seq_len - len(ids))
    if budget < 1:
        raise KilnError(f"the prompt is {len(ids)} tokens but the model's context is {cfg.max_seq_len}")
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    ids_stream = stream_generate(model, ids, budget, temperature=temperature, top_k=top_k, top_p=top_p,
                                 eos_id=tok.eos_id, generator=generator)
    return stream_text(tok, ids_stream, {tok.eos_id})


def chat_loop(model_dir: str | Path, *, tokenizer_dir: str | Path | None = None, system_prompt: str = "",
              max_new_tokens: int = 256, temperature: float = 0.7, top_k: int | None = 50,
              top_p: float | None = 0.9, seed: int | None = None, device: str = "cpu",
              input_fn: Callable[[str], str] = input, out: TextIO = sys.stdout) -> list[Message]:
    """Talk to a model in the terminal: ``/reset`` clears the history, ``/exit`` or EOF ends.

    Returns the conversation (the tests drive it with a scripted `input_fn`).
    """
    session = ChatSession(model_dir, tokenizer_dir=tokenizer_dir, system_prompt=system_prompt,
                          device=device, seed=seed)
    out.write(f"model: {model_dir} ({session.cfg.max_seq_len}-token context). /reset clears, /exit quits.\n")
    while True:
        try:
            text = input_fn("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            break
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            out.write("(history cleared)\n")
            continue
        if not text:
            continue
        out.write("assistant> ")
        for piece in session.reply(text, max_new_tokens=max_new_tokens, temperature=temperature,
                                   top_k=top_k, top_p=top_p):
            out.write(piece)
            out.flush()
        out.write("\n")
    return session.messages
