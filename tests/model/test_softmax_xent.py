"""The fused loss's Triton softmax pass (`model.softmax_xent`) against torch's cross-entropy.

Runs on CUDA, or on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` with triton
installed); skipped where neither is there (CI has no Triton)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from model import softmax_xent
from model.fused_loss import IGNORE_INDEX

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernel = pytest.mark.skipif(not (softmax_xent.HAVE_TRITON and (torch.cuda.is_available() or INTERPRET)),
                                  reason="needs Triton and CUDA (or TRITON_INTERPRET=1)")


def _reference(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row losses and the gradient of the mean over counted rows, in float32 by torch."""
    x = logits.float().requires_grad_()
    rows = F.cross_entropy(x, targets, ignore_index=IGNORE_INDEX, reduction="none")
    F.cross_entropy(x, targets, ignore_index=IGNORE_INDEX).backward()
    assert x.grad is not None
    return rows.detach(), x.grad


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [1000, 32000, 50000])
def test_row_losses_and_gradient_match_cross_entropy(dtype, vocab):
    gen = torch.Generator().manual_seed(vocab)
    rows = 24
    logits = (4 * torch.randn(rows, vocab, generator=gen)).to(dtype).to(DEVICE)
    targets = torch.randint(0, vocab, (rows,), generator=gen).to(DEVICE)
    targets[3:7] = IGNORE_INDEX
    targets[8] = vocab - 1  # the row's last column
    inv_counted = (1.0 / (targets != IGNORE_INDEX).sum().float()).reshape(())
    losses, grad = softmax_xent.softmax_xent(logits, targets, inv_counted, IGNORE_INDEX)
    want_losses, want_grad = _reference(logits, targets)
    assert losses.dtype == torch.float32 and grad.dtype == dtype and grad.shape == logits.shape
    torch.testing.assert_close(losses, want_losses, rtol=1e-5, atol=1e-4)
    tol = 1e-6 if dtype == torch.float32 else 4e-3 * float(want_grad.abs().max())
    assert float((grad.float() - want_grad).abs().max()) <= tol
    assert float(grad[3:7].abs().max()) == 0.0 and float(losses[3:7].abs().max()) == 0.0


@needs_kernel
def test_a_chunk_of_ignored_rows_adds_nothing():
    logits = torch.randn(8, 500).to(DEVICE)
    targets = torch.full((8,), IGNORE_INDEX, device=DEVICE)
    losses, grad = softmax_xent.softmax_xent(logits, targets, torch.ones((), device=DEVICE), IGNORE_INDEX)
    assert float(losses.abs().sum()) == 0.0 and float(grad.abs().sum()) == 0.0


def test_applies_only_to_cuda_rows_that_fit_the_kernel():
    assert not softmax_xent.applies(torch.zeros(4, 1000))  # CPU: the caller's torch path
    if softmax_xent.HAVE_TRITON and torch.cuda.is_available():
        assert softmax_xent.applies(torch.zeros(4, 32000, device="cuda", dtype=torch.bfloat16))
        assert not softmax_xent.applies(torch.zeros(4, softmax_xent.MAX_VOCAB + 1, device="cuda"))
        assert not softmax_xent.applies(torch.zeros(1000, 4, device="cuda").t())  # strided rows
        assert not softmax_xent.applies(torch.zeros(4, 1000, device="cuda", dtype=torch.int32))
