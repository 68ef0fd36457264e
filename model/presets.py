"""Named model shapes, from a CPU-millisecond `debug` model to Llama-3.1-8B.

    cfg = get_preset("tiny", vocab_size=tokenizer.vocab_size)

Trainers usually override `vocab_size` with their tokenizer's and
`max_seq_len` with their data's; everything else defines the flavor.
"""

from __future__ import annotations

import dataclasses

from kiln.errors import KilnError
from model.config import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    # Unit tests: ~0.1M params, runs a forward pass on CPU in about a millisecond.
    # n_kv_heads=2 < n_heads=4 so every test exercises the GQA path.
    "debug": ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128),
    # CPU demo: ~3M params (FFN width 512 by the Llama rule), trains in minutes on a laptop.
    # vocab 8192 matches a small SentencePiece model; override with the tokenizer's size.
    "tiny": ModelConfig(vocab_size=8192, dim=128, n_layers=4, n_heads=4, max_seq_len=256),
    # GPT-2-small shape (768/12/12, 85M non-embedding params, FFN 2048 by the Llama rule),
    # untied as in Llama: ~134M params in total.
    "125m": ModelConfig(vocab_size=32000, dim=768, n_layers=12, n_heads=12, max_seq_len=1024),
    # Llama-3.2-1B shape (1,235,814,400 params). We pretrain at 2048 tokens; the released
    # model reaches 131072 with rope_scaling="llama3", factor 32, original length 8192.
    "1b": ModelConfig(vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                      ffn_hidden=8192, max_seq_len=2048, rope_theta=500000.0, tie_embeddings=True),
    # Llama-2-7B (6,738,415,616 params).
    "7b": ModelConfig(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, ffn_hidden=11008,
                      max_seq_len=4096),
    # Llama-3-8B (8,030,261,248 params); ffn 14336 = the Llama rule with multiplier 1.3, multiple_of 1024.
    "llama3-8b": ModelConfig(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                             ffn_hidden=14336, max_seq_len=8192, rope_theta=500000.0),
    # Llama-3.1-8B: the same weights' shape, RoPE stretched 8x by the llama3 rule from its 8192-token
    # pretraining context to 131072 (HF config: factor 8, low/high freq factor 1/4). Training at
    # seq 4096-8192 needs no override: the rule fixes the frequencies, max_seq_len only the table length.
    # Untied like every Llama-3 8B; for a tied head: model.overrides.tie_embeddings = true.
    "llama3.1-8b": ModelConfig(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                               ffn_hidden=14336, max_seq_len=131072, rope_theta=500000.0,
                               rope_scaling="llama3", rope_scaling_factor=8.0, rope_original_max_seq_len=8192),
}


def get_preset(name: str, **overrides: object) -> ModelConfig:
    """A fresh copy of preset `name` with `overrides` applied (and re-validated)."""
    if name not in PRESETS:
        raise KilnError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise KilnError(f"unknown model config key {unknown[0]!r} for preset {name!r}; "
                        f"valid keys: {', '.join(sorted(known))}")
    return dataclasses.replace(PRESETS[name], **overrides)  # type: ignore[arg-type]
