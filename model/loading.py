"""Find and load what a model directory holds: its weights, its tokenizer and its generation settings.

A model directory is a training artifact (its ``final/``), an export artifact (its ``hf/``)
or any directory with a ``config.json`` in Kiln's or Hugging Face's layout. The export and
evaluate stages, the fine-tuning trainers and the ``kiln generate`` / ``kiln chat`` front
end all resolve models here, so they agree on where a tokenizer belongs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from model.config import ModelConfig
from model.hf_interop import build_llama, load_weights
from model.llama import Llama
from model.tokenizer import META_FILE, MODEL_FILE, Tokenizer, load_sentencepiece


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

    state, cfg = load_weights(model_dir(path))
    return build_llama(state, cfg, device=device), cfg


def find_tokenizer_dir(model_dir: str | Path) -> Path:
    """The tokenizer that belongs to a model: in its directory, its ``final/``, ``hf/`` or ``tokenizer/``,
    or beside it."""
    p = Path(model_dir)
    for candidate in (p, p / "final", p / "hf", p / "tokenizer", p.parent / "tokenizer", p.parent):
        if (candidate / "tokenizer.model").is_file():
            return candidate
    raise KilnError(f"{p}: no tokenizer.model found with the model; "
                    "give its tokenizer directory (kiln generate/chat --tokenizer DIR)")


def load_tokenizer(directory: str | Path) -> Any:
    """A `model.tokenizer.Tokenizer`; an HF export (tokenizer.model without Kiln's meta file) works too."""

    d = Path(directory)
    if (d / META_FILE).is_file():
        return Tokenizer.load(d)
    return Tokenizer(load_sentencepiece(d / MODEL_FILE), {})


def generation_settings(path: str | Path) -> dict[str, Any]:
    """``generation.json`` beside the weights (written by the pretrain/sft stages), or {}."""
    settings = model_dir(path) / "generation.json"
    return json.loads(settings.read_text()) if settings.is_file() else {}


def prompt_prefix(path: str | Path, tokenizer: Any) -> list[int]:
    """The ids a document started with in pretraining (the pretrain stage records them); by
    default EOS, which separates documents when no BOS was written."""
    prefix = generation_settings(path).get("prompt_prefix")
    return [int(i) for i in prefix] if isinstance(prefix, list) else [tokenizer.eos_id]
