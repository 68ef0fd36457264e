"""LoRA adapters: start as a no-op, only adapters train, merging preserves outputs, adapters save alone."""

from __future__ import annotations

import pytest
import torch

from kiln.errors import KilnError
from model import Llama, get_preset
from model.lora import (
    LoRALinear,
    apply_lora,
    load_lora_state_dict,
    lora_modules,
    lora_state_dict,
    merge_lora,
    merge_lora_state_dict,
    reset_lora_parameters,
    trainable_parameters,
)

TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


def tokens(seed: int = 0, batch: int = 2, length: int = 24) -> torch.Tensor:
    return torch.randint(0, 512, (batch, length), generator=torch.Generator().manual_seed(seed))


def trained_lora_model(steps: int = 5) -> tuple[Llama, dict[str, torch.Tensor]]:
    """A debug Llama with adapters trained a few steps, and a copy of its base weights before training."""
    torch.manual_seed(0)
    model = Llama(get_preset("debug"))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=4, alpha=8, targets=TARGETS)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = tokens()
    for _ in range(steps):
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model, base


def test_fresh_adapters_change_nothing_and_keep_base_keys():
    torch.manual_seed(0)
    model = Llama(get_preset("debug"))
    x = tokens()
    before = model(x)[0]
    base_keys = set(model.state_dict())
    apply_lora(model, rank=4, alpha=8)
    assert torch.equal(model(x)[0], before)  # B = 0
    keys = set(model.state_dict())
    assert base_keys <= keys
    assert keys - base_keys == {f"layers.{i}.attention.{w}.lora_{ab}" for i in range(2)
                                for w in ("wq", "wk", "wv", "wo") for ab in "AB"}
    a = model.layers[0].attention.wq
    assert isinstance(a, LoRALinear) and a.lora_A.shape == (4, 64) and a.lora_B.shape == (64, 4)
    assert a.lora_A.abs().sum() > 0 and a.lora_B.abs().sum() == 0


def test_only_adapters_train_and_base_weights_stay_fixed():
    model, base = trained_lora_model()
    trainable, total = trainable_parameters(model)
    n_lora = sum(m.lora_A.numel() + m.lora_B.numel() for _, m in lora_modules(model))
    assert trainable == n_lora and total == sum(v.numel() for v in base.values()) + n_lora
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(lora_state_dict(model))
    state = model.state_dict()
    for key, value in base.items():
        assert torch.equal(state[key], value), key  # frozen: not even weight decay moved them
    assert any(m.lora_B.abs().sum() > 0 for _, m in lora_modules(model))


def test_merged_model_matches_unmerged_and_is_a_plain_llama():
    model, base = trained_lora_model()
    x = tokens(1)
    with torch.no_grad():
        unmerged = model(x)[0]
    scaling = lora_modules(model)[0][1].scaling
    by_state = merge_lora_state_dict(model.state_dict(), scaling)
    merge_lora(model)
    assert not lora_modules(model) and set(model.state_dict()) == set(base)
    with torch.no_grad():
        merged = model(x)[0]
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    for key, value in model.state_dict().items():  # state-dict merging (FSDP path) agrees
        torch.testing.assert_close(by_state[key], value)
    assert any(not torch.equal(model.state_dict()[k], base[k]) for k in base)


def test_adapter_state_dict_round_trips_into_a_fresh_model():
    model, base = trained_lora_model()
    adapters = lora_state_dict(model)
    fresh = Llama(get_preset("debug"))
    fresh.load_state_dict(base)
    apply_lora(fresh, rank=4, alpha=8, targets=TARGETS)
    load_lora_state_dict(fresh, adapters)
    x = tokens(2)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x)[0], model(x)[0])
    wrong = Llama(get_preset("debug"))
    apply_lora(wrong, rank=4, alpha=8)  # attention only: the adapter's MLP keys do not fit
    with pytest.raises(KilnError, match="does not fit"):
        load_lora_state_dict(wrong, adapters)


def test_meta_device_build_then_reset():
    cfg = get_preset("debug")
    with torch.device("meta"):
        model = Llama(cfg)
        apply_lora(model, rank=2, alpha=4)
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights()
    reset_lora_parameters(model)
    a = model.layers[1].attention.wv
    assert isinstance(a, LoRALinear) and torch.isfinite(a.lora_A).all() and a.lora_B.abs().sum() == 0


def test_bad_settings_are_rejected():
    with pytest.raises(KilnError, match="unknown target"):
        apply_lora(Llama(get_preset("debug")), targets=("q_proj",))
    with pytest.raises(KilnError, match="rank"):
        apply_lora(Llama(get_preset("debug")), rank=0)
    with pytest.raises(KilnError, match="tie_embeddings"):
        apply_lora(Llama(get_preset("debug", tie_embeddings=True)), targets=("wq", "output"))
