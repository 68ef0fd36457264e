"""Chat data and chat use: record converters, the ChatML template, and interactive generation.

Records from the usual instruction-tuning formats become one list of messages
``[{"role": "system" | "user" | "assistant", "content": str}, ...]``:

    alpaca / BELLE  {"instruction", "input", "output"}
    ShareGPT        {"conversations": [{"from": "human" | "gpt" | "system", "value"}]}
    firefly         {"kind", "input", "target"}
    messages        {"messages": [{"role", "content"}]}        (OpenAI style)
    DPO             {"prompt", "chosen", "rejected"}           (`to_preference`)

The template is ChatML with the tokenizer's single-id chat tokens::

    <|im_start|>system\\nYou are helpful.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n

`chat_segments` cuts a conversation into template pieces and contents, each marked
trainable or not; training (`trainer.sft_data.encode_chat`) and generation
(`encode_prompt`) encode the same pieces one by one, so the ids a model was tuned
on are exactly the ids it is prompted with.

`generate_text` and `chat_loop` back ``kiln generate`` / ``kiln chat``: they load a
model directory (a training artifact, its ``final/``, or a Hugging Face export) and
stream tokens with a KV cache. No Prefect here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from kiln.errors import KilnError

if TYPE_CHECKING:  # model/ imports torch: loaded only when a model is
    from model import Llama, ModelConfig

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ROLES = ("system", "user", "assistant")
FORMATS = ("auto", "alpaca", "belle", "sharegpt", "firefly", "messages")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}
Message = dict[str, str]


class RecordError(ValueError):
    """Why one input record cannot be used; the data stage adds the file and position."""


# ---------------------------------------------------------------- converters
def detect_format(record: Mapping[str, Any]) -> str:
    """The format a record is written in, judged by its keys."""
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "messages"
    if "target" in record and "input" in record:
        return "firefly"
    if "instruction" in record and "output" in record:
        return "alpaca"  # BELLE's single-turn records have the same shape
    raise RecordError(f"unknown record format (keys: {sorted(record)[:6]}); expected alpaca/BELLE "
                      "{instruction, input, output}, ShareGPT {conversations}, firefly {kind, input, target} "
                      "or {messages}")


def _text(record: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def alpaca_messages(record: Mapping[str, Any]) -> list[Message]:
    """alpaca / BELLE: the input (if any) follows the instruction after a blank line."""
    instruction, extra = _text(record, "instruction").strip(), _text(record, "input", required=False).strip()
    user = f"{instruction}\n\n{extra}" if instruction and extra else instruction or extra
    messages = [{"role": "system", "content": _text(record, "system")}] if record.get("system") else []
    return [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": _text(record, "output")}]


def firefly_messages(record: Mapping[str, Any]) -> list[Message]:
    return [{"role": "user", "content": _text(record, "input")},
            {"role": "assistant", "content": _text(record, "target")}]


def sharegpt_messages(record: Mapping[str, Any]) -> list[Message]:
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise RecordError("field 'conversations' must be a list of {from, value}")
    messages = []
    if isinstance(record.get("system"), str) and record["system"]:
        messages.append({"role": "system", "content": record["system"]})
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or turn.get("from") not in SHAREGPT_ROLES:
            got = turn.get("from") if isinstance(turn, Mapping) else turn
            raise RecordError(f"conversations[{i}]: 'from' must be one of {sorted(SHAREGPT_ROLES)}, got {got!r}")
        messages.append({"role": SHAREGPT_ROLES[turn["from"]], "content": _text(turn, "value")})
    return messages


def openai_messages(record: Mapping[str, Any]) -> list[Message]:
    turns = record.get("messages")
    if not isinstance(turns, list):
        raise RecordError("field 'messages' must be a list of {role, content}")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or turn.get("role") not in ROLES:
            raise RecordError(f"messages[{i}]: 'role' must be one of {list(ROLES)}")
        out.append({"role": str(turn["role"]), "content": _text(turn, "content")})
    return out


_CONVERTERS: dict[str, Callable[[Mapping[str, Any]], list[Message]]] = {
    "alpaca": alpaca_messages, "belle": alpaca_messages, "sharegpt": sharegpt_messages,
    "firefly": firefly_messages, "messages": openai_messages,
}


def validate_messages(messages: Sequence[Message]) -> list[Message]:
    """Check roles and contents; a trailing user turn (nothing to learn from) is dropped."""
    out = [dict(m) for m in messages]
    while out and out[-1]["role"] != "assistant":
        out.pop()
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        raise RecordError("no non-empty assistant reply")
    for i, m in enumerate(out):
        if m["role"] == "system" and i != 0:
            raise RecordError(f"message {i}: a system message may only come first")
        if m["role"] == "user" and not m["content"].strip():
            raise RecordError(f"message {i}: empty user message")
        if IM_START in m["content"] or IM_END in m["content"]:
            raise RecordError(f"message {i}: contains a chat-template token ({IM_START} or {IM_END})")
    return out


def to_messages(record: Any, fmt: str = "auto", system_prompt: str = "") -> list[Message]:
    """One record as validated messages; `system_prompt` is added where the record has none."""
    if not isinstance(record, Mapping):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    if fmt not in FORMATS:
        raise KilnError(f"unknown SFT format {fmt!r}; use one of {', '.join(FORMATS)}")
    messages = _CONVERTERS[detect_format(record) if fmt == "auto" else fmt](record)
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return validate_messages(messages)


def to_preference(record: Any, system_prompt: str = "") -> tuple[list[Message], str, str]:
    """A DPO record as (prompt messages, chosen reply, rejected reply).

    `prompt` may be a string or a list of messages; `chosen` / `rejected` may be strings
    or message lists whose last message is the assistant reply.
    """
    if not isinstance(record, Mapping):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    for key in ("prompt", "chosen", "rejected"):
        if key not in record:
            raise RecordError(f"missing field {key!r} (DPO records are {{prompt, chosen, rejected}})")
    prompt = record["prompt"]
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = openai_messages({"messages": prompt})
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise RecordError("the prompt must end with a non-empty user message")
    chosen, rejected = _reply(record, "chosen"), _reply(record, "rejected")
    if chosen == rejected:
        raise RecordError("chosen and rejected replies are identical")
    validate_messages([*messages, {"role": "assistant", "content": chosen}])
    validate_messages([*messages, {"role": "assistant", "content": rejected}])
    return messages, chosen, rejected


def _reply(record: Mapping[str, Any], key: str) -> str:
    value = record[key]
    if isinstance(value, list) and value and isinstance(value[-1], Mapping):
        value = value[-1].get("content") if value[-1].get("role") == "assistant" else None
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"field {key!r} must be a non-empty reply string")
    return value


# ---------------------------------------------------------------- template
def chat_segments(messages: Sequence[Message], add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """The conversation as (text, trainable) pieces: an assistant's content and its <|im_end|> are
    trainable; role headers, the newline after <|im_end|>, system and user text are not."""
    segments: list[tuple[str, bool]] = []
    for m in messages:
        learn = m["role"] == "assistant"
        segments += [(f"{IM_START}{m['role']}\n", False), (m["content"], learn), (IM_END, learn), ("\n", False)]
    if add_generation_prompt:
        segments.append((f"{IM_START}assistant\n", False))
    return [(text, learn) for text, learn in segments if text]


def render_chat(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as one ChatML string (what Hugging Face's chat template renders)."""
    return "".join(text for text, _ in chat_segments(messages, add_generation_prompt))


def check_chat_tokens(tokenizer: Any) -> dict[str, int]:
    """The ids of <|im_start|> and <|im_end|>; KilnError if the tokenizer lacks them."""
    specials = tokenizer.special_tokens
    missing = [t for t in (IM_START, IM_END) if t not in specials]
    if missing:
        raise KilnError(f"tokenizer has no single-id chat token(s) {missing}; train it with "
                        "tokenizer.chat_tokens = ['<|im_start|>', '<|im_end|>']")
    return {t: specials[t] for t in (IM_START, IM_END)}


def encode_prompt(tokenizer: Any, messages: Sequence[Message], *, bos: bool = False) -> list[int]:
    """Ids of the conversation followed by the assistant header, encoded piece by piece as in training."""
    check_chat_tokens(tokenizer)
    ids = [tokenizer.bos_id] if bos else []
    for text, _ in chat_segments(messages, add_generation_prompt=True):
        ids += tokenizer.encode(text)
    return ids


# ---------------------------------------------------------------- loading models
def model_dir(path: str | Path) -> Path:
    """The directory holding a model's config.json: `path` itself, or its ``final/`` (training
    artifacts) or ``hf/`` (export artifacts)."""
    p = Path(path)
    for candidate in (p, p / "final", p / "hf"):
        if (candidate / "config.json").is_file():
            return candidate
    raise KilnError(f"{p}: no config.json here or in final/ or hf/; point at a model artifact or directory")


def load_model(path: str | Path, device: str = "cpu") -> tuple[Llama, ModelConfig]:
    """(Llama in eval mode, ModelConfig) from a model directory in Kiln or Hugging Face layout, or an
    artifact holding one (see `model_dir`)."""
    from model.hf_interop import build_llama, load_weights

    state, cfg = load_weights(model_dir(path))
    return build_llama(state, cfg, device=device), cfg


def find_tokenizer_dir(model_dir: str | Path) -> Path:
    """The tokenizer that belongs to a model: in its directory, its ``final/``, ``hf/`` or ``tokenizer/``,
    or beside it."""
    p = Path(model_dir)
    for candidate in (p, p / "final", p / "hf", p / "tokenizer", p.parent / "tokenizer", p.parent):
        if (candidate / "tokenizer.model").is_file():
            return candidate
    raise KilnError(f"{p}: no tokenizer.model found with the model; pass tokenizer_dir=<tokenizer artifact>")


def load_tokenizer(directory: str | Path) -> Any:
    """A `kiln.tokenizer.Tokenizer`; an HF export (tokenizer.model without Kiln's meta file) works too."""
    from kiln.tokenizer import META_FILE, MODEL_FILE, Tokenizer, load_sentencepiece

    d = Path(directory)
    if (d / META_FILE).is_file():
        return Tokenizer.load(d)
    return Tokenizer(load_sentencepiece(d / MODEL_FILE), {})


# ---------------------------------------------------------------- generation
class ChatSession:
    """A loaded model + tokenizer and the conversation so far; `reply` streams the next answer."""

    def __init__(self, model_dir: str | Path, *, tokenizer_dir: str | Path | None = None, system_prompt: str = "",
                 device: str = "cpu", seed: int | None = None) -> None:
        import torch

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
        from model.generate import stream_generate

        yield from stream_text(self.tokenizer, stream_generate(
            self.model, ids, budget, temperature=temperature, top_k=top_k, top_p=top_p,
            eos_id=check_chat_tokens(self.tokenizer)[IM_END], generator=self.generator), self.stop_ids)


def generation_settings(path: str | Path) -> dict[str, Any]:
    """``generation.json`` beside the weights (written by the pretrain/sft stages), or {}."""
    settings = model_dir(path) / "generation.json"
    return json.loads(settings.read_text()) if settings.is_file() else {}


def prompt_prefix(path: str | Path, tokenizer: Any) -> list[int]:
    """The ids a document started with in pretraining (the pretrain stage records them); by
    default EOS, which separates documents when no BOS was written."""
    prefix = generation_settings(path).get("prompt_prefix")
    return [int(i) for i in prefix] if isinstance(prefix, list) else [tokenizer.eos_id]


def stream_text(tokenizer: Any, token_ids: Iterator[int], stop_ids: set[int]) -> Iterator[str]:
    """Turn a stream of ids into text pieces, holding back incomplete UTF-8 byte sequences."""
    out: list[int] = []
    shown = ""
    for tok in token_ids:
        if tok in stop_ids:
            break
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
    import torch

    from model.generate import stream_generate

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
