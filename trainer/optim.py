"""AdamW with two parameter groups: decay for 2-D weights, none for gains and biases.

Which tensors decay (decided, as in nanoGPT and GPT-3): every parameter with two or
more dimensions -- the attention/MLP matmuls, the token embedding and the output
head -- decays; 1-D tensors -- RMSNorm gains (and biases, were there any) -- do not,
because pulling a norm gain toward 0 only shrinks the signal it exists to scale.
(Excluding embeddings too, as some recipes do, makes little difference at our scales.)

The fused CUDA kernel is used when the parameters live on CUDA (config `fused=None`):
one kernel for the whole update instead of several per tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.config import OptimSection


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """``[{params: decayed, weight_decay}, {params: not decayed, weight_decay: 0}]``, names kept for logs."""
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() >= 2:
            decay.append(p)
            decay_names.append(name)
        else:
            no_decay.append(p)
            no_decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def build_optimizer(model: nn.Module, cfg: OptimSection) -> torch.optim.AdamW:
    """AdamW over `param_groups`; lr is set by the schedule before every step."""
    groups = param_groups(model, cfg.weight_decay)
    # "names" is for humans and tests; AdamW would store it in its state dict, so drop it.
    groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    fused = on_cuda if cfg.fused is None else cfg.fused
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)
