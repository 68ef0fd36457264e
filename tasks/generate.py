"""Generate stage: sample text from a pretrained model artifact, as a check a person can read.

    ref = generate(model_ref, tokenizer_ref, GenerateConfig(prompt="The history of"), store)
    json.loads((ref.path / "samples.json").read_text())
    # [{"prompt": "The history of", "text": "The history of ...", "completion": " ...", "seed": 0, ...}, ...]

Runs on the CPU with the KV cache (each new token costs one token's forward pass).
Prompts start the way training documents did (``final/generation.json`` from the
pretrain stage: BOS if the data had one, else EOS, since in a packed stream every
document follows an EOS), and sample i draws from a generator seeded with
``seed + i``, so the same config gives the same text.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kiln.errors import KilnError
from model import generate as generate_ids
from model.tokenizer import Tokenizer
from storage.atomic import atomic_write_text
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from tasks.stage import Stage, reported
from trainer.checkpoint import load_final

STAGE = "generate"


@dataclass(frozen=True)
class GenerateConfig:
    """What to sample (``[generate]`` in a pipeline config)."""

    prompt: str = "The history of"
    """Text the samples continue."""
    max_new_tokens: int = 64
    """Tokens generated per sample at most (fewer if the model emits EOS)."""
    temperature: float = 0.8
    """Softmax temperature; 0 is greedy (then every sample is the same)."""
    top_k: int | None = 50
    """Sample among the k likeliest tokens only; None = no limit."""
    top_p: float | None = None
    """Nucleus sampling: the smallest set of likeliest tokens holding this much probability; None = off."""
    seed: int = 0
    """Sample i uses seed + i."""
    num_samples: int = 1
    """Independent samples of the same prompt."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise KilnError(f"generate.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_samples < 1:
            raise KilnError(f"generate.num_samples must be >= 1, got {self.num_samples}")
        if self.temperature < 0:
            raise KilnError(f"generate.temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise KilnError(f"generate.top_k must be >= 1 or unset, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise KilnError(f"generate.top_p must be in (0, 1] or unset, got {self.top_p}")


GENERATE = Stage(STAGE, "1", GenerateConfig, inputs=("model_ref", "tokenizer_ref"))


def generate(model_ref: ArtifactRef, tokenizer_ref: ArtifactRef, cfg: GenerateConfig,
             store: ArtifactStore) -> ArtifactRef:
    """Write ``samples.json``: a list of `cfg.num_samples` records {prompt, text, completion, seed, ...}."""
    return GENERATE.produce(store, cfg, {"model_ref": model_ref, "tokenizer_ref": tokenizer_ref},
                            lambda build: _generate_into(build, model_ref, tokenizer_ref, cfg))


@GENERATE.task
def generate_task(model_ref: ArtifactRef, tokenizer_ref: ArtifactRef, cfg: GenerateConfig,
                  store_root: str) -> ArtifactRef:
    """Prefect wrapper: cached by artifact key."""
    return reported(generate(model_ref, tokenizer_ref, cfg, open_store(store_root)))


def sample_texts(model_dir: Path, tok: Tokenizer, cfg: GenerateConfig) -> list[dict[str, Any]]:
    """Decode `cfg.num_samples` seeded samples from the exported model in `model_dir` (a ``final/``)."""
    model, model_cfg = load_final(model_dir, device="cpu")
    meta_path = model_dir / "generation.json"
    prefix = json.loads(meta_path.read_text())["prompt_prefix"] if meta_path.is_file() else []
    prompt_ids = tok.encode(cfg.prompt)
    ids = [*prefix, *prompt_ids]
    if not ids:
        raise KilnError("generate.prompt is empty and the model has no generation.json prefix; give a prompt")
    if len(ids) + cfg.max_new_tokens > model_cfg.max_seq_len:
        raise KilnError(f"generate.max_new_tokens ({cfg.max_new_tokens}) + prompt ({len(ids)} tokens) exceeds the "
                        f"model's max_seq_len ({model_cfg.max_seq_len}); lower max_new_tokens or shorten the prompt")
    samples = []
    for i in range(cfg.num_samples):
        generator = torch.Generator().manual_seed(cfg.seed + i)
        out = generate_ids(model, ids, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                           top_p=cfg.top_p, eos_id=tok.eos_id, use_kv_cache=True, generator=generator)
        new = out[len(ids):]
        samples.append({"prompt": cfg.prompt, "text": tok.decode(prompt_ids + new), "completion": tok.decode(new),
                        "seed": cfg.seed + i,
                        "new_tokens": len(new), "stopped_at_eos": bool(new) and new[-1] == tok.eos_id})
    return samples


def _generate_into(build: Build, model_ref: ArtifactRef, tokenizer_ref: ArtifactRef, cfg: GenerateConfig) -> None:
    final = model_ref.path / "final"
    if not (final / "config.json").is_file():
        raise KilnError(f"{final}: no exported model here; pass a pretrain artifact (it has final/config.json)")
    tok = Tokenizer.load(tokenizer_ref.path)
    started = time.perf_counter()
    samples = sample_texts(final, tok, cfg)
    elapsed = time.perf_counter() - started
    atomic_write_text(build.dir / "samples.json", json.dumps(samples, indent=2, ensure_ascii=False))
    new_tokens = sum(s["new_tokens"] for s in samples)
    build.counts.update({"samples": len(samples), "new_tokens": new_tokens})
    # Speed goes to the manifest, not samples.json: the same key must mean the same content.
    build.extra["tokens_per_s"] = round(new_tokens / max(elapsed, 1e-9), 1)
