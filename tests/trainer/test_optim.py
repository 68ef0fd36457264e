"""AdamW parameter groups: 2-D weights decay, norm gains do not; every parameter is in exactly one group."""

from __future__ import annotations

import torch

from model import Llama, get_preset
from trainer.config import OptimSection
from trainer.optim import build_optimizer, param_groups


def test_groups_split_matrices_from_gains():
    model = Llama(get_preset("debug"))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "tok_embeddings.weight" in decay["names"] and "output.weight" in decay["names"]
    assert "layers.0.attention.wq.weight" in decay["names"]
    assert "layers.0.feed_forward.w2.weight" in decay["names"]
    assert "norm.weight" in no_decay["names"] and "layers.1.ffn_norm.weight" in no_decay["names"]
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_tied_embedding_is_one_parameter_in_one_group():
    model = Llama(get_preset("debug", tie_embeddings=True))
    decay, _ = param_groups(model, 0.1)
    assert "output.weight" not in decay["names"]  # named_parameters dedups the shared tensor
    assert sum(p is model.tok_embeddings.weight for p in decay["params"]) == 1


def test_optimizer_settings_and_no_fused_on_cpu():
    model = Llama(get_preset("debug"))
    opt = build_optimizer(model, OptimSection(lr=1e-3, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert opt.defaults["betas"] == (0.8, 0.9) and opt.defaults["eps"] == 1e-6
    assert not opt.defaults["fused"]
    assert "names" not in opt.param_groups[0]
