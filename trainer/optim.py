"""AdamW with two parameter groups: decay for 2-D weights, none for gains and biases.

Which tensors decay (decided, as in nanoGPT and GPT-3): every parameter with two or
more dimensions -- the attention/MLP matmuls, the token embedding and the output
head -- decays; 1-D tensors -- RMSNorm gains (and biases, were there any) -- do not,
because pulling a norm gain toward 0 only shrinks the signal it exists to scale.
(Excluding embeddings too, as some recipes do, makes little difference at our scales.)

The fused CUDA kernel is used when the parameters live on CUDA (config `fused=None`):
one kernel for the whole update instead of several per tensor.

bf16 weights (``run.param_dtype = "bfloat16"``) get `StochasticRoundingAdamW` instead:
fp32 moments, the update computed in fp32, and the new weight rounded to bf16
stochastically, so that updates smaller than half a bf16 step (late in a run, lr x
update ~ 1e-5 against weights ~ 1e-2 whose bf16 spacing is ~ 1e-4) still move the
weight in expectation instead of rounding away. That is 12 bytes per parameter
(weight 2 + gradient 2 + moments 8) against 16 with fp32 master weights: an 8B model's
training state drops from 128 GB to 96 GB, which is what lets it keep activations on
one 141 GB GPU. The same recipe as torchao's ``_AdamW(bf16_stochastic_round=True)``,
without torchao, and with rounding noise that is a hash of (step, tensor, element)
rather than a draw from an RNG: a resumed run, or the same run on another number of
ranks, rounds exactly as the original did.

Stochastic rounding is unbiased, but its noise is a fixed fraction of a bf16 step while the
updates shrink with the learning rate: measured on the 1B shape over 1000 steps (README, "What
bf16 weights cost in loss"), the final loss ends 1.4 % above fp32 weights', the curves parting
as the schedule decays. ``optim.bf16_update = "kahan"`` instead rounds each new weight to
nearest and keeps what the rounding dropped in a bf16 compensation buffer that is added to the
next update (Kahan summation, as optimi's ``kahan_sum``): the weight plus its residual hold
~16 significant bits where bf16 alone holds 8, with no noise, for 2 more bytes a parameter
(14 in all: 112 GB at 8B). On the GPU, the same 1000-step run ended 0.5 % above the median
of three fp32-weights runs, inside their own 1.7 % spread (README, "What bf16 weights cost in
loss"); its update reads and writes the residual too, so the optimizer step is slower.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

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


def build_optimizer(model: nn.Module, cfg: OptimSection) -> torch.optim.Optimizer:
    """AdamW over `param_groups` (`StochasticRoundingAdamW` for bf16 weights); lr is set by the schedule
    before every step."""
    groups = param_groups(model, cfg.weight_decay)
    # "names" is for humans and tests; AdamW would store it in its state dict, so drop it.
    groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    params = [p for g in groups for p in g["params"]]
    dtypes = {p.dtype for p in params}
    fused = all(p.is_cuda for p in params) if cfg.fused is None else cfg.fused
    if torch.bfloat16 in dtypes:
        if dtypes != {torch.bfloat16}:
            raise ValueError(f"trainable parameters mix bf16 with {sorted(map(str, dtypes - {torch.bfloat16}))}; "
                             "run.param_dtype casts all of them")
        return StochasticRoundingAdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, compiled=fused,
                                       kahan=cfg.bf16_update == "kahan")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)


# -- bf16 weights: fp32 moments, stochastic rounding ------------------------------------------------
_M32 = 0xFFFFFFFF
COMPENSATION = "kahan_compensation"
"""The state key of a parameter's bf16 Kahan residual (`StochasticRoundingAdamW(kahan=True)`)."""


def mix32(*values: int) -> int:
    """A 31-bit hash of some integers (a step, a tensor's index): the per-tensor salt of the rounding noise.

    31 bits, not 32: the compiled update takes it as a scalar kernel argument, which must fit an int32."""
    h = 0x811C9DC5
    for v in values:
        h = _lowbias32((h ^ (v & _M32)) & _M32)
    return h & 0x7FFFFFFF


def _lowbias32(x: Any) -> Any:
    """Chris Wellons' lowbias32 integer hash, on Python ints or int64 tensors holding values < 2**32.

    Both multipliers are below 2**31, so with x < 2**32 every product stays below 2**63 and int64
    never overflows. Every right shift is masked to the bits a logical 32-bit shift keeps: where a
    compiler computes the hash in int32 (inductor narrows index arithmetic it can prove small) the
    wrapped products keep the same low 32 bits and the shifts the same bits, so CPU, CUDA and
    compiled code all give the same hash."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = (x * 0x5BD1E995) & _M32
    return x ^ ((x >> 16) & 0xFFFF)


def round_bf16_stochastic(x: Tensor, noise: Tensor) -> Tensor:
    """fp32 `x` rounded to bf16 up or down with probability by distance: E[result] = x.

    bf16 is the top 16 bits of fp32; the low 16 bits (`frac`) say how far x is from the value below
    (in magnitude). Rounding away from zero when `noise` (uniform 16-bit ints) is below `frac` does so
    with probability frac / 2**16."""
    bits = x.view(torch.int32)
    frac = bits & 0xFFFF
    toward_zero = bits & -0x10000
    rounded = torch.where(noise < frac, toward_zero + 0x10000, toward_zero)
    return rounded.view(torch.float32).to(torch.bfloat16)


def round_bf16_nearest(x: Tensor) -> Tensor:
    """fp32 `x` rounded to the nearest bf16 value (ties to even), as an fp32 tensor, computed on the bits.

    ``x.to(torch.bfloat16).float()`` says the same in eager mode, but inductor keeps a fused kernel's
    intermediates in fp32 unless told to emulate precision casts, so compiled, the round trip would be
    dropped and with it the Kahan residual (measured on an H200: 26 % of the weights off the eager CPU
    result after 3 steps). The bits cannot be optimized away. Finite values only; an overflow gives inf."""
    bits = x.view(torch.int32)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) & -0x10000
    return rounded.view(torch.float32)


def adamw_bf16_update(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, scalars: Tensor,
                      salt: int, offset: int, compensation: Tensor | None = None) -> None:
    """One AdamW step in place on flat tensors: bf16 `param` and `grad`, fp32 moments.

    `scalars` = [lr, beta1, beta2, weight_decay, eps, bias_correction1, sqrt(bias_correction2)] (fp32, on
    the device, so a new lr never recompiles); `salt` the tensor's 31-bit noise salt for this step (`mix32`);
    `offset` where this (shard of the) tensor starts in the whole flattened tensor, so every element gets
    the same noise however the tensor is sharded. The formula is torch.optim.AdamW's.
    With a bf16 `compensation` (Kahan) the salt and offset go unused: the new weight is rounded to nearest
    and what that dropped is kept in `compensation` for the next step."""
    lr, beta1, beta2, wd, eps, bc1, bc2_sqrt = scalars.unbind()
    g = grad.float()
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).add_((1 - beta2) * g * g)
    if compensation is not None:
        old = param.float()
        delta = compensation.float() - old * (lr * wd) - (lr / bc1) * exp_avg / (exp_avg_sq.sqrt() / bc2_sqrt + eps)
        new = round_bf16_nearest(old + delta)
        # new - old is exact in fp32 (two nearby bf16 values): the residual is what rounding dropped
        compensation.copy_(delta - (new - old))
        param.copy_(new)  # already a bf16 value: the cast is exact
        return
    new = param.float() * (1 - lr * wd) - (lr / bc1) * exp_avg / (exp_avg_sq.sqrt() / bc2_sqrt + eps)
    index = torch.arange(param.numel(), device=param.device, dtype=torch.int64) + (offset + salt)
    noise = _lowbias32(index & _M32) & 0xFFFF
    param.copy_(round_bf16_stochastic(new, noise.to(torch.int32)))


class StochasticRoundingAdamW(torch.optim.Optimizer):
    """AdamW for bf16 weights: fp32 moments, fp32 update, stochastic rounding to bf16 (see the module doc);
    ``kahan=True``: round to nearest with a bf16 compensation buffer per parameter instead.

    Works on plain tensors and on FSDP2's DTensor shards (the update is elementwise, so each rank
    updates its shard in place). ``compiled``: run each tensor's update as one fused kernel
    (``torch.compile``; ~22 bytes of memory traffic per parameter), else eagerly (CPU, tests).
    State per parameter: ``step`` (a CPU float tensor, as torch.optim.AdamW keeps it), ``exp_avg``,
    ``exp_avg_sq`` (fp32, sharded like the parameter) -- the same keys, so checkpoints read alike --
    and with kahan ``kahan_compensation`` (bf16, sharded like the parameter).
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, compiled: bool = False, kahan: bool = False) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.kahan = kahan
        self._update: Callable[..., None] = adamw_bf16_update
        if compiled:
            self._update = torch.compile(adamw_bf16_update, dynamic=True, fullgraph=True)
        # Per parameter, fixed for the optimizer's life: its index (salts its noise) and where its local shard
        # starts in the whole tensor (computed here once, not on every step).
        self._place = {id(p): (i, _global_offset(p))
                       for i, p in enumerate(p for g in self.param_groups for p in g["params"])}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but the moments stay fp32: torch.optim.Optimizer casts every floating state tensor
        to its parameter's dtype (bf16 here), which would drop 16 bits of each moment on every resume."""
        super().load_state_dict(state_dict)
        by_index = {i: p for saved, group in zip(state_dict["param_groups"], self.param_groups, strict=True)
                    for i, p in zip(saved["params"], group["params"], strict=True)}
        for index, values in state_dict["state"].items():
            param = by_index[index]
            for key, value in values.items():
                if key not in ("step", COMPENSATION) and torch.is_tensor(value) and value.is_floating_point():
                    self.state[param][key] = value.to(device=param.device, dtype=torch.float32)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            scalars: dict[tuple[int, torch.device], Tensor] = {}  # one host-to-device copy per group and step
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32,
                                                           memory_format=torch.preserve_format)
                if self.kahan and COMPENSATION not in state:  # also a state loaded from a stochastic run's
                    state[COMPENSATION] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = int(state["step"].item())
                local = _local(p)
                index, offset = self._place[id(p)]
                key = (step, local.device)
                if key not in scalars:
                    values = torch.tensor([group["lr"], beta1, beta2, group["weight_decay"], group["eps"],
                                           1 - beta1 ** step, math.sqrt(1 - beta2 ** step)], dtype=torch.float32,
                                          pin_memory=local.is_cuda)
                    scalars[key] = values.to(local.device, non_blocking=True)
                compensation = _local(state[COMPENSATION]).view(-1) if self.kahan else None
                self._update(local.view(-1), _local(p.grad).view(-1), _local(state["exp_avg"]).view(-1),
                             _local(state["exp_avg_sq"]).view(-1), scalars[key], mix32(step, index), offset,
                             compensation)
        return loss


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard (the storage the update writes), or `t` itself."""
    return t._local_tensor if hasattr(t, "_local_tensor") else t  # type: ignore[union-attr]


def _global_offset(p: Tensor) -> int:
    """The flat index, in the whole tensor, of the first element of `p`'s local shard (0 unsharded)."""
    if _local(p) is p:
        return 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, global_offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)  # type: ignore[attr-defined]
    strides = [math.prod(p.shape[i + 1:]) for i in range(p.dim())]
    return sum(o * s for o, s in zip(global_offset, strides, strict=True))
