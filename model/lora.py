"""LoRA: low-rank adapters on a `Llama`'s linear layers, merged back into plain weights when done.

    apply_lora(model, rank=8, alpha=16, targets=("wq", "wk", "wv", "wo"))  # base frozen, adapters train
    ...train...
    save_file(lora_state_dict(model), "adapter.safetensors")
    merge_lora(model)                                                    # a plain Llama again

A `LoRALinear` keeps the wrapped layer's ``weight`` under the same name, so a base
checkpoint loads into a LoRA model unchanged (`load_state_dict(base, strict=False)`)
and the only new state-dict keys are ``<layer>.lora_A`` [rank, in] and
``<layer>.lora_B`` [out, rank]. Its output is ``W x + (alpha / rank) * B A dropout(x)``
with A ~ Kaiming-uniform and B = 0, so an adapter starts as an exact no-op (Hu et al.,
2021). Works on the meta device: call `reset_lora_parameters` after ``to_empty``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.errors import KilnError

# Names of the Llama submodules that may carry an adapter (attention, SwiGLU, output head).
LORA_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3", "output")
DEFAULT_TARGETS = ("wq", "wk", "wv", "wo")


class LoRALinear(nn.Module):
    """A frozen bias-free linear layer plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if base.bias is not None:
            raise KilnError("LoRA: layers with a bias are not supported (Llama has none)")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.weight = base.weight  # the same Parameter: no copy, same state-dict key
        self.weight.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, rank, **factory))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if base.weight.device.type != "meta":
            self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A as nn.Linear initializes its weight, B = 0: the adapter adds nothing until trained."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> Tensor:
        """The dense update ``scaling * B @ A`` [out, in], computed in fp32."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight) + update * self.scaling

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def _named_targets(model: nn.Module, targets: Sequence[str]) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, child) for every submodule whose last name component is in `targets`."""
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            if attr in targets:
                yield parent, attr, child


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets: Sequence[str] = DEFAULT_TARGETS) -> nn.Module:
    """Freeze every parameter of `model` and wrap each target linear in a `LoRALinear` (in place).

    Returns the model. Only the adapters' A and B train afterwards.
    """
    if rank < 1:
        raise KilnError(f"LoRA: rank must be >= 1, got {rank}")
    if not 0 <= dropout < 1:
        raise KilnError(f"LoRA: dropout must be in [0, 1), got {dropout}")
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown or not targets:
        raise KilnError(f"LoRA: unknown target(s) {unknown or '[]'}; choose from {', '.join(LORA_TARGETS)}")
    cfg = getattr(model, "cfg", None)
    if "output" in targets and getattr(cfg, "tie_embeddings", False):
        # Merging would change the shared matrix, i.e. the input embeddings too.
        raise KilnError("LoRA: target 'output' is not allowed with tie_embeddings=True")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = 0
    for parent, attr, child in _named_targets(model, targets):
        if isinstance(child, nn.Linear):
            setattr(parent, attr, LoRALinear(child, rank, alpha, dropout))
            wrapped += 1
    if not wrapped:
        raise KilnError(f"LoRA: no nn.Linear named {list(targets)} in {type(model).__name__}")
    return model


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """Every adapter of `model` with its qualified name."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def reset_lora_parameters(model: nn.Module) -> None:
    """Re-initialize every adapter (after `to_empty` on a model built on the meta device)."""
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.reset_lora_parameters()


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain `nn.Linear`s back (in place).

    The merged model computes what the adapted one did (up to rounding) and has the
    base model's state-dict keys again, so it exports and loads like any Llama.
    """
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                merged = child.weight.float() + child.delta_weight()
                linear = nn.Linear(child.in_features, child.out_features, bias=False,
                                   device=child.weight.device, dtype=child.weight.dtype)
                linear.weight.copy_(merged.to(child.weight.dtype))
                setattr(parent, attr, linear)
    return model


def merge_lora_state_dict(state: dict[str, Tensor], scaling: float) -> dict[str, Tensor]:
    """A full state dict with adapters folded in and their keys dropped (for FSDP's gathered weights)."""
    out = {k: v for k, v in state.items() if not k.endswith((".lora_A", ".lora_B"))}
    for key, a in state.items():
        if key.endswith(".lora_A"):
            prefix = key.removesuffix(".lora_A")
            b, w = state[f"{prefix}.lora_B"], state[f"{prefix}.weight"]
            out[f"{prefix}.weight"] = (w.float() + (b.float() @ a.float()) * scaling).to(w.dtype)
    return out


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapters' tensors (what a LoRA run needs to save), detached on CPU."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


def load_lora_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load adapter tensors saved by `lora_state_dict` into a model that `apply_lora` prepared."""
    own = {f"{name}.{p}" for name, _ in lora_modules(model) for p in ("lora_A", "lora_B")}
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise KilnError(f"LoRA adapter does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}; "
                        "apply_lora with the adapter's rank and targets first")
    model.load_state_dict(state, strict=False)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied matrix counts once."""
    params = list(model.parameters())  # parameters() already skips the second name of a shared tensor
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
