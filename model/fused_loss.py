"""Output projection + cross-entropy in chunks of tokens, so the [tokens, vocab] logits never exist whole.

    loss = linear_cross_entropy(h, model.output.weight, targets)   # == F.cross_entropy(h @ W.T, targets)

At a 128k vocabulary the logits are the largest tensors of a step: 16k tokens x 128,256
x (2 bytes of bf16 logits + 4 of their fp32 upcast + 4 of the softmax gradient) is ~21 GB,
more than the 1B model's weights, gradients and AdamW states together. This computes, for
each chunk of tokens in turn, the chunk's logits, its share of the loss and at once the
gradients with respect to the hidden states and the weight (Liger-Kernel's
FusedLinearCrossEntropy design), then drops the chunk's logits. Backward only scales the
stored gradients by the incoming one, so the step does the same three matmuls as the plain
head (forward, grad wrt h, grad wrt W) and no recompute.

FP8 (``fp8=True``, `run.fp8_head`): the three matmuls run on FP8 tensor cores with tensorwise
scales, as torchao's recipe does for the block linears: h and the weight in e4m3 with dynamic
scales (amax of all of h / of the whole weight), the softmax gradient in e5m2 with a *static*
scale -- every entry of ``softmax - onehot`` lies in [-1, 1], so no amax pass over the [C, V]
gradient is needed. Logits and the weight gradient come out of the GEMM in float32. At 1B with
an untied 128k head these GEMMs are a fifth of the step's FLOPs, the largest part left in bf16.

Numerics match ``F.cross_entropy(reduction="mean", ignore_index=-100)`` of the plain head: the
chunk's logits come out of the matmul in its input dtype (as ``nn.Linear`` gives them) and are
upcast once; log-sum-exp, softmax and the loss run in float32; the weight gradient accumulates
over chunks in float32 and is cast to the weight's dtype once at the end. Only the summation
order differs, so in float32 the two agree to rounding.

On CUDA with a vocabulary of at most 32768 the softmax pass (row losses and the logits' gradient)
is one Triton kernel, `model.softmax_xent`, reading each chunk's logits once in their own dtype;
larger vocabularies and the FP8 head keep the compiled torch code below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import model.softmax_xent as softmax_xent

IGNORE_INDEX = -100  # targets equal to this add nothing to the loss (SFT masks prompts this way)
CHUNK_LOGITS_BYTES = 1 << 30
"""Default chunk size aims at ~1 GiB of float32 logits per chunk: big enough that each chunk's
three matmuls still saturate a GPU, small enough that a chunk's temporaries (its fp32 logits,
softmax in place, a bf16 copy of the gradient) stay near 1.5 GiB whatever the micro-batch."""


E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
FP8_GRAD_SCALE = 2.0 ** 15
"""Static scale of the e5m2 softmax gradient: |softmax - onehot| <= 1 maps to <= 32768 (e5m2's max is
57344), and probabilities down to 2^-31 stay nonzero (a 128k vocabulary's uniform 7.8e-6 is far above)."""
AMAX_EPS = 1e-12  # torchao's floor on an amax, so an all-zero tensor gets a finite scale
FP8_ALIGN = 16  # FP8 GEMMs need every dimension a multiple of 16


def _amax(x: Tensor) -> Tensor:
    return x.abs().amax().float()


def _to_e4m3(x: Tensor, amax: Tensor) -> tuple[Tensor, Tensor]:
    """`x` in e4m3 with the dynamic scale max/amax (torchao's tensorwise cast), and the scale that undoes it."""
    fmax = torch.finfo(E4M3).max
    scale = fmax / amax.clamp(min=AMAX_EPS)
    return (x.float() * scale).clamp(-fmax, fmax).to(E4M3), scale.reciprocal()


def _column_major(x8: Tensor) -> Tensor:
    """The same matrix laid out column-major: FP8 GEMMs take their second operand only that way."""
    return x8.t().contiguous().t()


def _fp8_mm(a: Tensor, b: Tensor, unscale_a: Tensor, unscale_b: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``a @ b`` on FP8 tensor cores (a row-major, b column-major), dequantized by the two scales."""
    return torch._scaled_mm(a, b, scale_a=unscale_a, scale_b=unscale_b,  # pyright: ignore[reportPrivateImportUsage]
                            out_dtype=out_dtype)


@dataclass(frozen=True)
class _Fp8Head:
    """What one forward's FP8 GEMMs share: the weight cast once, row-major for ``h @ W.T`` and column-major
    for ``grad @ W``; one amax for all of h, not one per chunk, so that the chunk size stays a matter of
    memory and speed (a runtime setting), not of what is learned; and the gradient's unscale."""

    rows: Tensor
    cols: Tensor
    w_unscale: Tensor
    h_amax: Tensor
    grad_unscale: Tensor

    @classmethod
    def of(cls, weight: Tensor, h: Tensor, counted: Tensor) -> _Fp8Head:
        rows, w_unscale = _to_e4m3(weight, _amax(weight))
        # undoes the gradient's static scale and takes the mean over counted tokens
        return cls(rows, _column_major(rows), w_unscale, _amax(h), (counted * FP8_GRAD_SCALE).reciprocal())

    def chunk(self, h_c: Tensor) -> _Fp8Chunk:
        return _Fp8Chunk(self, *_to_e4m3(h_c, self.h_amax))


@dataclass(frozen=True)
class _Fp8Chunk:
    """One chunk of h in e4m3, and the chunk's three GEMMs."""

    head: _Fp8Head
    h8: Tensor
    h_unscale: Tensor

    def logits(self) -> Tensor:
        return _fp8_mm(self.h8, self.head.rows.t(), self.h_unscale, self.head.w_unscale, torch.float32)

    def grad_h(self, g8: Tensor, dtype: torch.dtype) -> Tensor:
        return _fp8_mm(g8, self.head.cols, self.head.grad_unscale, self.head.w_unscale, dtype)

    def grad_w(self, g8: Tensor) -> Tensor:
        return _fp8_mm(g8.t().contiguous(), _column_major(self.h8), self.head.grad_unscale, self.h_unscale,
                       torch.float32)


def default_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk for ~`CHUNK_LOGITS_BYTES` of fp32 logits, a multiple of 256 (GEMM-friendly), >= 256."""
    return max(256, (CHUNK_LOGITS_BYTES // (4 * vocab_size)) // 256 * 256)


def _chunked(h: Tensor, weight: Tensor, targets: Tensor, chunk_size: int, need_h: bool,
             need_w: bool, fp8: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Mean loss over counted tokens and, when asked, its gradients wrt h [N, D] and weight [V, D]."""
    counted = (targets != IGNORE_INDEX).sum().clamp(min=1).float()
    total = h.new_zeros((), dtype=torch.float32)
    grad_h = torch.empty_like(h) if need_h else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
    head8 = _Fp8Head.of(weight, h, counted) if fp8 else None
    inv_counted = counted.reciprocal()
    for start in range(0, h.shape[0], chunk_size):
        h_c, t_c = h[start:start + chunk_size], targets[start:start + chunk_size]
        chunk8 = head8.chunk(h_c) if head8 is not None else None
        if chunk8 is not None:
            logits = chunk8.logits()  # [C, V], fp32
        else:
            logits_c = h_c @ weight.t()  # [C, V] in the compute dtype
            if (need_h or need_w) and softmax_xent.applies(logits_c):  # one Triton pass over the chunk
                row_losses, grad = softmax_xent.softmax_xent(logits_c, t_c, inv_counted, IGNORE_INDEX)
                total = total + row_losses.sum()
                _accumulate(grad, h_c, weight, grad_h, grad_w, start)
                continue
            logits = logits_c.float()
        lse = torch.logsumexp(logits, dim=-1)
        valid = t_c != IGNORE_INDEX
        safe = t_c.clamp(min=0)[:, None]  # ignored rows pick class 0; `valid` zeroes them below
        total = total + ((lse - logits.gather(1, safe).squeeze(1)) * valid).sum()
        if not (need_h or need_w):
            continue
        # d(mean loss)/d(logits) = (softmax - onehot(target)) / counted, zero on ignored rows; in place.
        grad = logits.sub_(lse[:, None]).exp_()
        grad.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=grad.dtype))
        if chunk8 is not None:
            g8 = grad.mul_((valid * FP8_GRAD_SCALE)[:, None]).to(E5M2)  # 1/counted goes into grad_unscale
            if grad_h is not None:
                grad_h[start:start + chunk_size] = chunk8.grad_h(g8, h.dtype)
            if grad_w is not None:
                grad_w += chunk8.grad_w(g8)
            continue
        _accumulate(grad.mul_((valid / counted)[:, None]).to(weight.dtype), h_c, weight, grad_h, grad_w, start)
    return total / counted, grad_h, None if grad_w is None else grad_w.to(weight.dtype)


def _accumulate(grad: Tensor, h_c: Tensor, weight: Tensor, grad_h: Tensor | None, grad_w: Tensor | None,
                start: int) -> None:
    """A chunk's share of the gradients from its logits' gradient (in the weight's dtype): its rows of
    grad_h, and its addition to the float32 grad_w."""
    if grad_h is not None:
        grad_h[start:start + grad.shape[0]] = grad @ weight
    if grad_w is not None:
        # (`torch.addmm(..., out_dtype=float32)` would add in the GEMM, but torch 2.11's addmm
        # decomposition takes out_dtype for beta under torch.compile; inductor fuses this add.)
        grad_w += (grad.t() @ h_c).float()


class _LinearCrossEntropy(torch.autograd.Function):
    """The gradients are made in forward (one pass over each chunk's logits); backward scales them."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, chunk_size: int,  # type: ignore[override]
                need_h: bool, need_w: bool, fp8: bool) -> Tensor:
        loss, grad_h, grad_w = _chunked(h, weight, targets, chunk_size, need_h, need_w, fp8)
        ctx.save_for_backward(grad_h, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_loss.float()
        return (None if grad_h is None else (grad_h * scale).to(grad_h.dtype),
                None if grad_w is None else (grad_w * scale).to(grad_w.dtype), None, None, None, None, None)


def linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, chunk_size: int | None = None,
                         fp8: bool = False) -> Tensor:
    """Mean cross-entropy of ``h @ weight.T`` against `targets` (IGNORE_INDEX rows skipped; 0 if none count).

    h: [..., D] hidden states after the final norm; weight: [V, D] the output head (the embedding
    table when tied); targets: [...] class ids. Under autocast, h and weight are cast to the
    autocast dtype first, as ``nn.Linear`` would be (the cast is differentiable, so the fp32
    master weight gets its gradient). Without autograd (validation) only the loss is computed,
    and in the weights' own precision even with `fp8`: FP8 is how a step trains, the loss of the
    weights it learned is measured exactly (and an exported model runs its head in bf16 anyway).
    `fp8` needs the token count, chunk size, D and V to be multiples of 16.
    """
    h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    if torch.is_autocast_enabled(h.device.type):
        dtype = torch.get_autocast_dtype(h.device.type)
        h, weight = h.to(dtype), weight.to(dtype)
    chunk = chunk_size or default_chunk_size(weight.shape[0])
    grad_on = torch.is_grad_enabled()
    need_h, need_w = grad_on and h.requires_grad, grad_on and weight.requires_grad
    if not (need_h or need_w):
        return _chunked(h, weight, targets, chunk, False, False)[0]
    if fp8:
        dims = {"tokens": h.shape[0], "chunk size": chunk, "hidden dim": h.shape[1], "vocab": weight.shape[0]}
        odd = [f"{name} {n}" for name, n in dims.items() if n % FP8_ALIGN]
        if odd:
            raise ValueError(f"FP8 head needs multiples of {FP8_ALIGN}; got {', '.join(odd)} "
                             "(pad the vocabulary / sequence, or set run.fp8_head=false)")
    return _LinearCrossEntropy.apply(h, weight, targets, chunk, need_h, need_w, fp8)
