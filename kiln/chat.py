"""Chat data: record converters and the ChatML template (what every layer that touches chats shares).

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
on are exactly the ids it is prompted with. Loading models lives in `model.loading`;
the ``kiln generate`` / ``kiln chat`` front end in `cli.chat`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kiln.errors import KilnError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


ROLES = ("system", "user", "assistant")


FORMATS = ("auto", "alpaca", "belle", "sharegpt", "firefly", "messages")


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}


Message = dict[str, str]


class RecordError(ValueError):
    """Why one input record cannot be used; the data stage adds the file and position."""


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
