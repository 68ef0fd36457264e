"""Hugging Face export/import: transformers loads our export with the same logits, and import round-trips.

Each RoPE rule is checked against transformers' own implementation, which also
proves that no q/k permutation is needed between the two layouts.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from kiln.errors import KilnError
from model import Llama, get_preset
from model.hf_interop import export_hf, import_hf, model_config_from_hf

pytest.importorskip("safetensors")

ROPES = {
    "none": {},
    "linear": {"rope_scaling": "linear", "rope_scaling_factor": 2.0},
    "ntk": {"rope_scaling": "ntk", "rope_scaling_factor": 4.0},
    "yarn": {"rope_scaling": "yarn", "rope_scaling_factor": 4.0, "rope_original_max_seq_len": 32},
    "llama3": {"rope_scaling": "llama3", "rope_scaling_factor": 8.0, "rope_original_max_seq_len": 16,
               "rope_theta": 500000.0},
}


def random_llama(seed: int = 0, **overrides: object) -> Llama:
    """A debug Llama with every weight random (norm gains too), so a swapped tensor cannot hide."""
    torch.manual_seed(seed)
    model = Llama(get_preset("debug", **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 else 0.0))
    return model.eval()


def tokens(length: int = 100) -> torch.Tensor:
    return torch.randint(0, 512, (2, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("rope", list(ROPES))
def test_transformers_logits_match(tmp_path, rope):
    transformers = pytest.importorskip("transformers")
    model = random_llama(**ROPES[rope])
    export_hf(model, model.cfg, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    x = tokens()  # 100 positions: past yarn's / llama3's original lengths, so scaling matters
    with torch.no_grad():
        ours = model(x)[0]
        theirs = hf(x).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_tied_embeddings_export_without_lm_head(tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    model = random_llama(tie_embeddings=True)
    export_hf(model, model.cfg, tmp_path)
    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = tokens(20)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf(x).logits, rtol=1e-4, atol=1e-4)
    back, cfg = import_hf(tmp_path)
    assert cfg.tie_embeddings and back.output.weight is back.tok_embeddings.weight


@pytest.mark.parametrize("rope", ["none", "yarn", "llama3"])
def test_export_import_round_trip_is_exact(tmp_path, rope):
    model = random_llama(**ROPES[rope])
    export_hf(model, model.cfg, tmp_path)
    back, cfg = import_hf(tmp_path)
    assert cfg == dataclasses.replace(model.cfg, ffn_hidden=model.cfg.hidden_dim)  # the width, resolved
    ours, theirs = model.state_dict(), back.state_dict()
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_ntk_exports_as_an_equivalent_base(tmp_path):
    model = random_llama(**ROPES["ntk"])
    export_hf(model, model.cfg, tmp_path)
    back, cfg = import_hf(tmp_path)
    assert cfg.rope_scaling == "none" and cfg.rope_theta > model.cfg.rope_theta
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(back(x)[0], model(x)[0], rtol=1e-5, atol=1e-5)


def test_import_a_transformers_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                                      rms_norm_eps=1e-6, rope_theta=20000.0)
    torch.manual_seed(3)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path)
    model, cfg = import_hf(tmp_path)
    assert (cfg.dim, cfg.n_kv_heads, cfg.ffn_hidden, cfg.rope_theta) == (48, 1, 96, 20000.0)
    x = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf(x).logits, rtol=1e-4, atol=1e-4)


def test_config_and_tokenizer_files(tmp_path, chat_tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    from model.tokenizer import Tokenizer

    tok = Tokenizer.load(chat_tokenizer_dir)
    model = random_llama(vocab_size=tok.model_vocab_size)
    export_hf(model, model.cfg, tmp_path, tokenizer_dir=chat_tokenizer_dir)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["eos_token_id"] == tok.eos_id and config["tie_word_embeddings"] is False
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tok.eos_id, tok.special_tokens["<|im_end|>"]]
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": "Name a color."}]
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n"
    # HF encodes the rendered string at once; Kiln encodes piece by piece. The ids must agree.
    from kiln.chat import encode_prompt

    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Two  spaces\nÜnï 中文?"},
                {"role": "assistant", "content": "Yes, of course."}, {"role": "user", "content": "Why?"}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert list(ids) == encode_prompt(tok, messages)


def test_unsupported_configs_are_named():
    with pytest.raises(KilnError, match="rope_type 'dynamic'"):
        model_config_from_hf({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                              "num_hidden_layers": 1, "vocab_size": 10, "intermediate_size": 8,
                              "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})
    with pytest.raises(KilnError, match="bias"):
        model_config_from_hf({"model_type": "llama", "attention_bias": True})


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # inside the last tensor: the file still parses
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("layout", ["kiln", "hf"])
def test_a_flipped_byte_in_the_weights_fails_the_load(tmp_path, layout):
    from model.hf_interop import load_weights
    from model.integrity import CHECKSUMS
    from trainer.checkpoint import export_final

    model = random_llama()
    if layout == "kiln":
        out = export_final(model.state_dict(), model.cfg, tmp_path / "final")
    else:
        out = export_hf(model, model.cfg, tmp_path / "hf")
    state, _ = load_weights(out)  # intact: verified and loaded
    assert len(state) == len(model.state_dict())
    flip_a_byte(out / "model.safetensors")
    with pytest.raises(KilnError, match=r"model.safetensors: does not match its sha256 in checksums.json"):
        load_weights(out)
    (out / CHECKSUMS).unlink()  # a Kiln-written directory without its checksums is not trusted either
    with pytest.raises(KilnError, match="checksums.json: missing"):
        load_weights(out)
