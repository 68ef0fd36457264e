"""The fused loss's softmax pass as one Triton kernel: a chunk's logits read once, its gradient written once.

For each chunk of tokens `model.fused_loss` needs, from the [C, V] logits, every row's loss
``lse - logit[target]`` and the gradient ``(softmax - onehot(target)) * valid / counted`` in the
logits' dtype. Inductor compiles that as a looped reduction, because a row of 32k entries is past
its persistent-reduction limit (1024 entries, 16384 with multi-kernel), and so streams each row
more than once: at 125M on an H200 an 8192 x 32000 bf16 chunk took 570 us, ~4 % of the step, where
one read and one write of it take ~260 us at 4 TB/s. Here one program holds a whole row in
registers (up to `MAX_VOCAB` entries: 64 floats a thread at 16 warps), reduces it and writes the
gradient from the same registers.

Larger vocabularies (Llama-3's 128k) do not fit a row in one SM's registers and keep Inductor's
kernel. Without Triton or CUDA `applies` is False and the caller keeps its own path, so this
module imports everywhere; ``TRITON_INTERPRET=1`` runs the kernel on CPU tensors for the tests.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor
from torch.library import triton_op, wrap_triton

MAX_VOCAB = 32768
"""Widest row the kernel takes: 32768 floats over 16 warps are 64 registers a thread."""

HAVE_TRITON = importlib.util.find_spec("triton") is not None
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
NUM_WARPS = (16,) if os.environ.get("TRITON_INTERPRET") == "1" else (8, 16, 32)
"""Launch widths the autotuner times once per row width (the interpreter has no timer: one)."""

if HAVE_TRITON:
    import triton  # pyright: ignore[reportMissingImports]
    import triton.language as tl  # pyright: ignore[reportMissingImports]

    @triton.autotune(configs=[triton.Config({}, num_warps=w) for w in NUM_WARPS], key=["n_cols"])
    @triton.jit
    def _softmax_xent_kernel(logits_ptr, grad_ptr, loss_ptr, targets_ptr, inv_counted_ptr, n_cols,
                             row_stride, ignore_index, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        in_row = cols < n_cols
        x = tl.load(logits_ptr + row * row_stride + cols, mask=in_row, other=float("-inf")).to(tl.float32)
        target = tl.load(targets_ptr + row)
        valid = target != ignore_index
        is_target = (cols == target) & valid  # an ignored row has no target column
        x_target = tl.sum(tl.where(is_target, x, 0.0), axis=0)
        row_max = tl.max(x, axis=0)
        e = tl.exp(x - row_max)  # 0 past the row's end (x = -inf there)
        total = tl.sum(e, axis=0)
        tl.store(loss_ptr + row, tl.where(valid, row_max + tl.log(total) - x_target, 0.0))
        scale = tl.where(valid, tl.load(inv_counted_ptr), 0.0)
        grad = (e * (1.0 / total) - tl.where(is_target, 1.0, 0.0)) * scale
        tl.store(grad_ptr + row * row_stride + cols, grad.to(grad_ptr.dtype.element_ty), mask=in_row)

    @triton_op("kiln::softmax_xent", mutates_args=())
    def _softmax_xent_op(logits: Tensor, targets: Tensor, inv_counted: Tensor,
                         ignore_index: int) -> tuple[Tensor, Tensor]:
        """The kernel as a custom op: torch.compile traces through it to the Triton launch."""
        rows, n_cols = logits.shape
        losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
        grad = torch.empty_like(logits)
        wrap_triton(_softmax_xent_kernel)[(rows,)](logits, grad, losses, targets, inv_counted, n_cols,
                                                   logits.stride(0), ignore_index,
                                                   BLOCK=triton.next_power_of_2(n_cols))
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
