"""Tests for model.config and model.presets: validation names the field, presets round-trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kiln.errors import KilnError
from model import PRESETS, ModelConfig, get_preset


@pytest.mark.parametrize(("overrides", "field"), [
    ({"dim": 65}, "n_heads"),
    ({"n_kv_heads": 3}, "n_kv_heads"),
    ({"rope_scaling": "dynamic"}, "rope_scaling"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"n_layers": -1}, "n_layers"),
    ({"ffn_hidden": 0}, "ffn_hidden"),
    ({"rope_scaling_factor": 0.0}, "rope_scaling_factor"),
    ({"dim": 24, "n_heads": 8}, "RoPE"),  # head_dim 3 cannot be rotated in pairs
    ({"dim": 8, "n_heads": 4, "n_kv_heads": 2, "rope_scaling": "ntk"}, "rope_scaling"),
    ({"dim": "64"}, "dim"),
    ({"dim": 64.0}, "dim"),
    ({"tie_embeddings": 1}, "tie_embeddings"),
])
def test_validation_error_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(KilnError, match=field) as info:
        get_preset("debug", **overrides)
    assert "\n" not in str(info.value)


def test_derived_sizes() -> None:
    cfg = ModelConfig()  # Llama-2-7B defaults
    assert (cfg.head_dim, cfg.kv_heads, cfg.hidden_dim) == (128, 32, 11008)
    llama3 = ModelConfig(n_kv_heads=8, ffn_dim_multiplier=1.3, multiple_of=1024)
    assert (llama3.kv_heads, llama3.hidden_dim) == (8, 14336)
    assert ModelConfig(ffn_hidden=1000).hidden_dim == 1000


def test_ints_are_accepted_for_float_fields_and_stored_as_floats() -> None:
    cfg = get_preset("debug", rope_theta=500000)
    assert cfg.rope_theta == 500000.0 and isinstance(cfg.rope_theta, float)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json(name: str) -> None:
    cfg = PRESETS[name]
    assert ModelConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg


def test_get_preset_copies_and_overrides() -> None:
    cfg = get_preset("tiny", vocab_size=1234)
    assert cfg.vocab_size == 1234 and PRESETS["tiny"].vocab_size == 8192
    assert get_preset("debug") is not PRESETS["debug"]


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(KilnError, match="debug, tiny, 125m"):
        get_preset("gpt5")


def test_unknown_override_key_is_named() -> None:
    with pytest.raises(KilnError, match="'hidden_size'"):
        get_preset("debug", hidden_size=10)


def test_llama31_8b_preset_exports_the_released_hf_config() -> None:
    from model.hf_interop import hf_config

    hf = hf_config(get_preset("llama3.1-8b"))
    assert (hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"], hf["num_key_value_heads"],
            hf["intermediate_size"], hf["vocab_size"]) == (4096, 32, 32, 8, 14336, 128256)
    assert hf["max_position_embeddings"] == 131072 and hf["rope_theta"] == 500000.0
    assert hf["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    assert hf["tie_word_embeddings"] is False
