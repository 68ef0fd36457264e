"""Tests for model.llama: shapes, loss masking, GQA, masks, KV cache, init, and HF parity."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from kiln.errors import KilnError
from model import Llama, get_preset
from model.config import ModelConfig


def _debug(**overrides: object) -> Llama:
    torch.manual_seed(0)
    return Llama(get_preset("debug", **overrides))


def test_forward_shapes_and_no_loss_without_targets() -> None:
    model = _debug()
    tokens = torch.randint(0, 512, (3, 17))
    logits, loss = model(tokens)
    assert logits.shape == (3, 17, 512)
    assert loss is None


def test_gqa_uses_fewer_kv_heads() -> None:
    model = _debug()
    cfg = model.cfg
    assert (cfg.n_heads, cfg.kv_heads, cfg.head_dim) == (4, 2, 16)
    attn = model.layers[0].attention
    assert attn.wq.out_features == 4 * 16
    assert attn.wk.out_features == attn.wv.out_features == 2 * 16
    cache = model.make_kv_cache(batch=2, max_len=10)
    assert cache.k[0].shape == (2, 2, 10, 16)


def test_gqa_equals_mha_with_repeated_kv_weights() -> None:
    """GQA query head h must read kv head h // 2: same as MHA whose k/v heads are repeated."""
    gqa = _debug()
    mha = Llama(get_preset("debug", n_kv_heads=4))
    sd = gqa.state_dict()
    for i in range(gqa.cfg.n_layers):
        for w in ("wk", "wv"):
            key = f"layers.{i}.attention.{w}.weight"
            sd[key] = sd[key].view(2, 16, 64).repeat_interleave(2, dim=0).reshape(64, 64)
    mha.load_state_dict(sd)
    tokens = torch.randint(0, 512, (2, 12))
    torch.testing.assert_close(gqa(tokens)[0], mha(tokens)[0], atol=1e-5, rtol=1e-5)


def test_loss_ignores_minus_100_targets() -> None:
    model = _debug()
    tokens = torch.randint(0, 512, (2, 10))
    targets = torch.randint(0, 512, (2, 10))
    targets[0, :4] = -100
    targets[1, 7:] = -100
    logits, loss = model(tokens, targets)
    keep = targets != -100
    manual = F.cross_entropy(logits[keep], targets[keep])  # mean over the 13 kept positions only
    torch.testing.assert_close(loss, manual)


def test_loss_mask_counts_only_true_positions() -> None:
    model = _debug()
    tokens, targets = torch.randint(0, 512, (2, 10)), torch.randint(0, 512, (2, 10))
    loss_mask = torch.rand(2, 10) > 0.5
    _, masked = model(tokens, targets, loss_mask=loss_mask)
    _, ignored = model(tokens, targets.masked_fill(~loss_mask, -100))
    torch.testing.assert_close(masked, ignored)


def test_loss_is_zero_not_nan_when_nothing_counts() -> None:
    model = _debug()
    tokens = torch.randint(0, 512, (1, 5))
    _, loss = model(tokens, torch.full((1, 5), -100))
    assert loss.item() == 0.0


def test_debug_model_overfits_one_batch() -> None:
    model = _debug()
    tokens = torch.randint(0, 512, (4, 33))
    x, y = tokens[:, :-1], tokens[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(100):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5, loss.item()


def test_doc_ids_make_packed_documents_independent() -> None:
    """With doc masking, a document packed after another gives the logits it gives alone
    (RoPE is relative, so its shifted positions do not matter)."""
    model = _debug()
    a, b = torch.randint(0, 512, (1, 7)), torch.randint(0, 512, (1, 9))
    packed = torch.cat([a, b], dim=1)
    doc_ids = torch.tensor([[0] * 7 + [1] * 9])
    logits, _ = model(packed, doc_ids=doc_ids)
    torch.testing.assert_close(logits[:, 7:], model(b)[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[:, :7], model(a)[0], atol=1e-5, rtol=1e-5)
    unmasked, _ = model(packed)
    assert not torch.allclose(unmasked[:, 7:], logits[:, 7:], atol=1e-3)


def test_attn_mask_all_true_equals_causal() -> None:
    model = _debug()
    tokens = torch.randint(0, 512, (2, 8))
    full = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    torch.testing.assert_close(model(tokens, attn_mask=full)[0], model(tokens)[0], atol=1e-5, rtol=1e-5)


def test_kv_cache_prefill_and_steps_match_full_forward() -> None:
    model = _debug()
    tokens = torch.randint(0, 512, (2, 12))
    full, _ = model(tokens)
    cache = model.make_kv_cache(batch=2, max_len=12)
    parts = [model(tokens[:, :5], kv_cache=cache)[0],  # prefill
             model(tokens[:, 5:8], kv_cache=cache, start_pos=5)[0]]  # chunk at an offset
    parts += [model(tokens[:, i:i + 1], kv_cache=cache, start_pos=i)[0] for i in range(8, 12)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_too_long_input_is_a_clear_error() -> None:
    model = _debug(max_seq_len=16)
    with pytest.raises(KilnError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(KilnError, match="max_seq_len"):
        model.make_kv_cache(batch=1, max_len=32)


def test_meta_build_then_init_weights_gives_expected_stds() -> None:
    cfg = ModelConfig(vocab_size=1000, dim=256, n_layers=4, n_heads=4, max_seq_len=64)
    with torch.device("meta"):
        model = Llama(cfg)
    assert model.tok_embeddings.weight.is_meta
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    out_std = 0.02 / math.sqrt(2 * 4)
    block = model.layers[2]
    for w, std in [(model.tok_embeddings.weight, 0.02), (model.output.weight, 0.02),
                   (block.attention.wq.weight, 0.02), (block.feed_forward.w1.weight, 0.02),
                   (block.attention.wo.weight, out_std), (block.feed_forward.w2.weight, out_std)]:
        assert w.mean().abs() < 3e-3
        assert w.std().item() == pytest.approx(std, rel=0.05)
    assert torch.equal(block.ffn_norm.weight, torch.ones(256))
    torch.testing.assert_close(model.rope_sin, Llama(cfg).rope_sin)
    assert torch.isfinite(model(torch.randint(0, 1000, (1, 8)))[0]).all()


def test_tied_embeddings_survive_meta_init_and_state_dict() -> None:
    cfg = get_preset("debug", tie_embeddings=True)
    with torch.device("meta"):
        model = Llama(cfg)
    model.to_empty(device="cpu")
    model.init_weights()
    assert model.output.weight is model.tok_embeddings.weight
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters(remove_duplicate=False)}


def test_bf16_model_tracks_fp32_model() -> None:
    model = _debug()
    tokens, targets = torch.randint(0, 512, (2, 128)), torch.randint(0, 512, (2, 128))
    ref, ref_loss = model(tokens, targets)
    logits, loss = model.to(torch.bfloat16)(tokens, targets)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32  # loss upcast inside
    assert (logits.float() - ref).abs().max() < 0.05 * ref.abs().max()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-2)


# ---------------------------------------------------------------- Hugging Face parity
_HF_NAMES = [
    (r"^tok_embeddings\.", "model.embed_tokens."),
    (r"^layers\.(\d+)\.attention\.w([qkvo])\.", r"model.layers.\1.self_attn.\2_proj."),
    (r"^layers\.(\d+)\.attention_norm\.", r"model.layers.\1.input_layernorm."),
    (r"^layers\.(\d+)\.ffn_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (r"^layers\.(\d+)\.feed_forward\.w1\.", r"model.layers.\1.mlp.gate_proj."),
    (r"^layers\.(\d+)\.feed_forward\.w3\.", r"model.layers.\1.mlp.up_proj."),
    (r"^layers\.(\d+)\.feed_forward\.w2\.", r"model.layers.\1.mlp.down_proj."),
    (r"^norm\.", "model.norm."),
    (r"^output\.", "lm_head."),
]


def _hf_name(name: str) -> str:
    for pattern, repl in _HF_NAMES:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    raise AssertionError(f"no HF name for {name}")


def _hf_config(transformers, cfg: ModelConfig):  # noqa: ANN001, ANN202
    rope: dict[str, object] = {"rope_type": "default" if cfg.rope_scaling == "none" else cfg.rope_scaling}
    if cfg.rope_scaling != "none":
        rope["factor"] = cfg.rope_scaling_factor
    if cfg.rope_scaling in ("yarn", "llama3"):
        rope["original_max_position_embeddings"] = cfg.rope_original_len
    if cfg.rope_scaling == "llama3":
        rope.update(low_freq_factor=1.0, high_freq_factor=4.0)
    kwargs = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim,
                  num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                  num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.max_seq_len,
                  rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
                  attention_bias=False, mlp_bias=False, hidden_act="silu")
    if hasattr(transformers.LlamaConfig(), "rope_parameters"):  # transformers >= 5
        kwargs["rope_parameters"] = {**rope, "rope_theta": cfg.rope_theta}
    else:
        kwargs["rope_theta"] = cfg.rope_theta
        kwargs["rope_scaling"] = None if cfg.rope_scaling == "none" else rope
    return transformers.LlamaConfig(**kwargs)


@pytest.mark.parametrize("overrides", [
    {},
    {"tie_embeddings": True, "rope_theta": 500000.0},
    {"rope_scaling": "linear", "rope_scaling_factor": 2.0},
    # max_seq_len = factor * original: HF's yarn derives the factor from that ratio in recent versions.
    {"rope_scaling": "yarn", "rope_scaling_factor": 4.0, "rope_original_max_seq_len": 32},
    {"rope_scaling": "llama3", "rope_scaling_factor": 8.0, "rope_original_max_seq_len": 32},
], ids=["plain", "tied", "linear", "yarn", "llama3"])
def test_logits_match_transformers_llama(overrides: dict[str, object]) -> None:
    transformers = pytest.importorskip("transformers")
    if overrides.get("rope_scaling") == "yarn":
        major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
        if (major, minor) < (4, 45):
            pytest.skip("transformers < 4.45 ignores yarn's original_max_position_embeddings")
    cfg = get_preset("debug", **overrides)
    torch.manual_seed(0)
    ours = Llama(cfg).float().eval()
    hf = transformers.LlamaForCausalLM(_hf_config(transformers, cfg)).float().eval()
    result = hf.load_state_dict({_hf_name(k): v for k, v in ours.state_dict().items()}, strict=False)
    tied_head = {"lm_head.weight"} if cfg.tie_embeddings else set()
    assert set(result.missing_keys) <= tied_head and set(result.unexpected_keys) <= tied_head, result
    torch.testing.assert_close(hf.lm_head.weight, ours.output.weight)
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.max_seq_len))  # long enough to reach scaled dims
    with torch.no_grad():
        theirs = hf(input_ids=tokens).logits
        mine, _ = ours(tokens)
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
