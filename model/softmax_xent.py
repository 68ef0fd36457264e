"""The fused loss's softmax pass as one Triton kernel: a chunk's logits read once, its gradient written once.

For each chunk of tokens `model.fused_loss` needs, from the [C, V] logits, every row's loss
``lse - logit[target]`` and the gradient ``(softmax - onehot(target)) * valid / counted`` in the
logits' dtype. Inductor compiles that as a looped reduction, because a row of 32k entries is past
its persistent-reduction limit (1024 entries, 16384 with multi-kernel), and materializes float32
temporaries: at 125M on an H200 its fused loss took 44.4 ms a step against 36.6 ms with this pass
(`benchmarks/softmax_xent_speed.py`, 2.2 TB/s for the pass alone), and peak memory fell from 58.3 to 42.9 GB.

One program per row, two passes over it in tiles: an online max and sum of exponentials per lane
(the row read from HBM and kept in L2), then the gradient from the row read again, mostly from L2,
and written once. Holding the whole row in registers instead (a first version) capped an SM at one
row in flight and ran at 1.7 TB/s.

It applies to vocabularies up to `MAX_VOCAB` (measured there); larger ones keep Inductor's kernel.
Without Triton or CUDA `applies` is False and the caller keeps its own path, so this module imports
everywhere; ``TRITON_INTERPRET=1`` runs the kernel on CPU tensors for the tests.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor
from torch.library import triton_op, wrap_triton

MAX_VOCAB = 32768
"""Widest row `applies` hands to the kernel: the widths it was measured faster at (the kernel takes any)."""

HAVE_TRITON = importlib.util.find_spec("triton") is not None
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
CONFIGS = ((1024, 4),) if os.environ.get("TRITON_INTERPRET") == "1" else ((2048, 8), (4096, 8), (4096, 16), (8192, 16))
"""(tile width, warps) pairs the autotuner times once per row width (the interpreter has no timer: one,
with a tile narrower than the tests' rows so the loops run several times)."""

if HAVE_TRITON:
    import triton  # pyright: ignore[reportMissingImports]
    import triton.language as tl  # pyright: ignore[reportMissingImports]

    @triton.autotune(configs=[triton.Config({"BLOCK": b}, num_warps=w) for b, w in CONFIGS], key=["n_cols"])
    @triton.jit
    def _softmax_xent_kernel(logits_ptr, grad_ptr, loss_ptr, targets_ptr, inv_counted_ptr, n_cols,
                             row_stride, ignore_index, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        row_logits, row_grad = logits_ptr + row * row_stride, grad_ptr + row * row_stride
        target = tl.load(targets_ptr + row)
        valid = target != ignore_index
        # Pass 1 (HBM): each lane's running max and sum of exp over the row's tiles (online softmax).
        lane_max = tl.full([BLOCK], float("-inf"), tl.float32)
        lane_sum = tl.zeros([BLOCK], tl.float32)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(row_logits + cols, mask=cols < n_cols, other=float("-inf"),
                        eviction_policy="evict_last").to(tl.float32)
            new_max = tl.maximum(lane_max, x)
            empty = new_max == float("-inf")  # a lane past the row's end so far: nothing to add
            lane_sum = tl.where(empty, 0.0, lane_sum * tl.exp(lane_max - new_max) + tl.exp(x - new_max))
            lane_max = new_max
        row_max = tl.max(lane_max, axis=0)
        lse = row_max + tl.log(tl.sum(lane_sum * tl.exp(lane_max - row_max), axis=0))
        x_target = tl.load(row_logits + tl.where(valid, target, 0)).to(tl.float32)
        tl.store(loss_ptr + row, tl.where(valid, lse - x_target, 0.0))
        scale = tl.where(valid, tl.load(inv_counted_ptr), 0.0)
        # Pass 2 (the row again, from L2): the gradient (softmax - onehot) * scale in the logits' dtype.
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            in_row = cols < n_cols
            x = tl.load(row_logits + cols, mask=in_row, other=0.0, eviction_policy="evict_first").to(tl.float32)
            grad = (tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)) * scale
            tl.store(row_grad + cols, grad.to(row_grad.dtype.element_ty), mask=in_row)

    @triton_op("kiln::softmax_xent", mutates_args=())
    def _softmax_xent_op(logits: Tensor, targets: Tensor, inv_counted: Tensor,
                         ignore_index: int) -> tuple[Tensor, Tensor]:
        """The kernel as a custom op: torch.compile traces through it to the Triton launch."""
        rows, n_cols = logits.shape
        losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
        grad = torch.empty_like(logits)
        wrap_triton(_softmax_xent_kernel)[(rows,)](logits, grad, losses, targets, inv_counted, n_cols,
                                                   logits.stride(0), ignore_index)
        return losses, grad


def softmax_xent(logits: Tensor, targets: Tensor, inv_counted: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """(row losses [C] in float32, gradient [C, V] in logits' dtype) of mean cross-entropy over a chunk.

    logits: [C, V] with contiguous rows; targets: [C] int64 class ids in [0, V) or `ignore_index`
    (its rows get loss 0 and gradient 0); inv_counted: a 0-d float32 tensor, 1 / the number of counted
    tokens of the whole batch (the chunk is a part of the mean). Out of place, so compile and the
    kernel's autotuning need no copies."""
    if not HAVE_TRITON:
        raise RuntimeError("model.softmax_xent needs triton (check `applies` first)")
    return _softmax_xent_op(logits, targets, inv_counted, ignore_index)


def applies(logits: Tensor) -> bool:
    """Whether `softmax_xent` takes these [C, V] logits: CUDA with Triton, a float dtype, V <= MAX_VOCAB,
    contiguous rows."""
    return (HAVE_TRITON and logits.is_cuda and logits.dim() == 2 and logits.dtype in DTYPES
            and 0 < logits.shape[1] <= MAX_VOCAB and logits.stride(1) == 1)
