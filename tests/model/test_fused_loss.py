"""The chunked head + cross-entropy equals the plain one (loss and gradients) and never makes the full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from model import IGNORE_INDEX, Llama, get_preset, softmax_xent
from model.fused_loss import default_chunk_size, linear_cross_entropy

N, D, V = 37, 16, 50  # 37 tokens: no chunk size below divides it


def _inputs(seed: int = 0, ignore: slice | None = slice(8, 20)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=gen, dtype=torch.float64).float().requires_grad_()
    w = (0.3 * torch.randn(V, D, generator=gen)).requires_grad_()
    t = torch.randint(0, V, (N,), generator=gen)
    if ignore is not None:
        t[ignore] = IGNORE_INDEX  # with chunk 5 or 7, whole chunks in here count nothing
    t[-1] = IGNORE_INDEX
    return h, w, t


def _plain(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy((h @ w.t()).float(), t, ignore_index=IGNORE_INDEX)


@pytest.mark.parametrize("chunk", [5, 7, 64, None])  # non-dividing, one chunk for all, the default
def test_loss_and_grads_match_plain_cross_entropy(chunk):
    h, w, t = _inputs()
    ref = _plain(h, w, t)
    ref_gh, ref_gw = torch.autograd.grad(ref * 3.0, (h, w))  # a non-unit upstream gradient
    loss = linear_cross_entropy(h, w, t, chunk)
    gh, gw = torch.autograd.grad(loss * 3.0, (h, w))
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-5, atol=1e-7)
    assert gh[8:20].abs().max() == 0  # ignored tokens get no gradient


def test_all_ignored_is_zero_loss_and_zero_grads():
    h, w, t = _inputs()
    t[:] = IGNORE_INDEX
    loss = linear_cross_entropy(h, w, t, 8)
    loss.backward()
    assert loss.item() == 0.0 and h.grad is not None and w.grad is not None
    assert h.grad.abs().max() == 0 and w.grad.abs().max() == 0


def test_only_the_inputs_that_need_grads_get_them():
    h, w, t = _inputs()
    w.requires_grad_(False)  # a frozen head (LoRA without the output target)
    linear_cross_entropy(h, w, t, 6).backward()
    ref_h = h.detach().clone().requires_grad_()
    _plain(ref_h, w, t).backward()
    torch.testing.assert_close(h.grad, ref_h.grad)
    with torch.no_grad():  # validation: loss only
        torch.testing.assert_close(linear_cross_entropy(h, w, t, 6), _plain(h, w, t))


def test_batched_shape_and_bfloat16_weight():
    h, w, t = _inputs(ignore=None)
    hb, wb = h.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    loss = linear_cross_entropy(hb[:36].view(4, 9, D), wb, t[:36].view(4, 9), 10)
    loss.backward()
    assert hb.grad is not None and wb.grad is not None
    assert loss.dtype == torch.float32 and hb.grad.dtype == wb.grad.dtype == torch.bfloat16
    ref_h, ref_w = hb.detach().clone().requires_grad_(), wb.detach().clone().requires_grad_()
    ref = _plain(ref_h[:36], ref_w, t[:36])
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(wb.grad, ref_w.grad, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("tied", [True, False])
def test_debug_model_params_get_the_plain_gradients(tied):
    """End to end through the debug preset: every parameter's gradient, tied or untied head, with a loss mask."""
    cfg = get_preset("debug", tie_embeddings=tied)
    torch.manual_seed(0)
    plain = Llama(cfg)
    fused = Llama(cfg)
    fused.load_state_dict(plain.state_dict())
    fused.fused_loss_chunk = 13  # 3 x 20 = 60 tokens: 5 chunks, the last one short
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, cfg.vocab_size, (3, 20), generator=gen)
    y = torch.randint(0, cfg.vocab_size, (3, 20), generator=gen)
    y[0, :15] = IGNORE_INDEX  # an SFT prompt
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[2, 5:] = False
    logits, loss = fused(x, y, loss_mask=mask)
    assert logits is None
    _, ref = plain(x, y, loss_mask=mask)
    loss.backward()
    assert ref is not None
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    grads = dict(plain.named_parameters())
    for name, p in fused.named_parameters():
        ref_grad = grads[name].grad
        assert p.grad is not None and ref_grad is not None, name
        torch.testing.assert_close(p.grad, ref_grad, rtol=1e-5, atol=1e-6, msg=name)
    assert fused(x)[0] is not None  # without targets the head still returns logits (generation, DPO)


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("fused", [False, True])
def test_no_tensor_of_full_logits_size_is_made(fused):
    """The fused head's largest intermediate is one chunk's logits; the plain head makes [N, V] (so this can fail)."""
    cfg = get_preset("debug", vocab_size=4096, dim=32)  # logits dwarf every weight and activation
    model = Llama(cfg)
    model.fused_loss_chunk = 64 if fused else None
    x = torch.randint(0, cfg.vocab_size, (4, 128))
    with _LargestOutput() as probe:
        model(x, x.roll(-1, dims=1))[1].backward()  # type: ignore[union-attr]
    n_logits = x.numel() * cfg.vocab_size
    if fused:
        assert probe.largest <= 64 * cfg.vocab_size < n_logits
    else:
        assert probe.largest >= n_logits


def test_compiles_with_autograd():
    """Dynamo traces the autograd.Function (aot_eager: no C++ toolchain needed) and gets the same gradients."""
    h, w, t = _inputs()
    compiled = torch.compile(linear_cross_entropy, backend="aot_eager", fullgraph=True)
    loss = compiled(h, w, t, 7)
    gh, gw = torch.autograd.grad(loss, (h, w))
    ref_gh, ref_gw = torch.autograd.grad(_plain(h, w, t), (h, w))
    torch.testing.assert_close(gh, ref_gh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-5, atol=1e-7)


def test_default_chunk_size_keeps_chunk_logits_near_one_gib():
    assert default_chunk_size(128256) == 2048  # 2048 x 128256 x 4 B = 0.98 GiB
    assert default_chunk_size(512) % 256 == 0 and default_chunk_size(10**9) == 256


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_bfloat16_gradients_match_the_plain_bfloat16_head(compiled):
    """bf16 on CUDA, eager and under inductor with fullgraph (the trainer compiles the head): the loss and
    gradients match the plain bf16 head's (one bf16 GEMM over all tokens, as nn.Linear computes it).
    With Triton the chunks' softmax pass is `model.softmax_xent`'s kernel (the vocab fits a row of it)."""
    gen = torch.Generator().manual_seed(3)
    n, d, v = 1000, 64, 4096  # 8 chunks of 128, the last one short
    assert softmax_xent.applies(torch.empty(128, v, device="cuda", dtype=torch.bfloat16)) == softmax_xent.HAVE_TRITON
    h = torch.randn(n, d, generator=gen).cuda().bfloat16()
    w = (0.2 * torch.randn(v, d, generator=gen)).cuda().bfloat16()
    t = torch.randint(0, v, (n,), generator=gen).cuda()
    hb, wb = h.clone().requires_grad_(), w.clone().requires_grad_()
    fn = torch.compile(linear_cross_entropy, fullgraph=True) if compiled else linear_cross_entropy
    loss = fn(hb, wb, t, 128)
    loss.backward()
    ref_h, ref_w = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = _plain(ref_h, ref_w, t)
    ref.backward()
    assert hb.grad is not None and wb.grad is not None and ref_h.grad is not None and ref_w.grad is not None
    assert wb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref, rtol=1e-3, atol=1e-3)
    for got, want in ((hb.grad, ref_h.grad), (wb.grad, ref_w.grad)):
        err = (got.float() - want.float()).abs().max().item()
        assert err <= 0.01 * want.float().abs().max().item(), (err, want.abs().max().item())


# ---------------------------------------------------------------- FP8 head (run.fp8_head)
def _fp8_inputs(n: int = 256, d: int = 64, v: int = 512, seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=gen).requires_grad_()
    w = (0.1 * torch.randn(v, d, generator=gen)).requires_grad_()
    t = torch.randint(0, v, (n,), generator=gen)
    t[16:48] = IGNORE_INDEX
    return h, w, t


def _dequantized(x: torch.Tensor, dtype: torch.dtype, amax: torch.Tensor | float) -> torch.Tensor:
    """x through an fp8 cast with scale max/amax and back, in float32: what the FP8 GEMM multiplies."""
    scale = torch.finfo(dtype).max / torch.as_tensor(amax, dtype=torch.float32)
    return (x.float() * scale).to(dtype).float() / scale


def test_fp8_head_multiplies_the_quantized_operands_exactly():
    """Emulated in float32 from the same e4m3 / e5m2 roundings (dynamic tensorwise scales for h and the
    weight, the static 2^15 one for the softmax gradient): the FP8 GEMMs give the same loss and
    gradients, so the operands, their layouts and the scales are wired right."""
    h, w, t = _fp8_inputs()
    chunk = 128
    e4, e5 = torch.float8_e4m3fn, torch.float8_e5m2
    counted = (t != IGNORE_INDEX).sum().float()
    wq = _dequantized(w.detach(), e4, w.detach().abs().amax())
    total, gh_ref, gw_ref = 0.0, torch.empty_like(h), torch.zeros_like(w)
    for s in range(0, h.shape[0], chunk):
        hc, tc = h.detach()[s:s + chunk], t[s:s + chunk]
        hq = _dequantized(hc, e4, h.detach().abs().amax())  # one scale for all of h
        logits = hq @ wq.t()
        valid = tc != IGNORE_INDEX
        total += (F.cross_entropy(logits, tc.clamp(min=0), reduction="none") * valid).sum()
        g = torch.softmax(logits, -1) - F.one_hot(tc.clamp(min=0), w.shape[0]).float()
        g = (g * valid[:, None] * 2.0 ** 15).to(e5).float() / (2.0 ** 15 * counted)
        gh_ref[s:s + chunk] = g @ wq
        gw_ref += g.t() @ hq
    loss = linear_cross_entropy(h, w, t, chunk, fp8=True)
    gh, gw = torch.autograd.grad(loss, (h, w))
    torch.testing.assert_close(loss, total / counted, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh, gh_ref, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-4, atol=1e-7)


def test_fp8_head_numerics_do_not_depend_on_the_chunk_size():
    """The chunk size is a runtime setting (memory, speed): with the FP8 head too, other chunks give the same
    loss and gradients up to float summation order, since h has one scale, not one per chunk."""
    h, w, t = _fp8_inputs()
    results = []
    for chunk in (64, 128, 256):
        loss = linear_cross_entropy(h, w, t, chunk, fp8=True)
        results.append((loss, *torch.autograd.grad(loss, (h, w))))
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_fp8_head_is_close_to_the_exact_head():
    """What FP8 costs: loss within 0.5 %, gradients at cosine >= 0.99 of the float32 head's."""
    h, w, t = _fp8_inputs()
    ref = _plain(h, w, t)
    ref_gh, ref_gw = torch.autograd.grad(ref, (h, w))
    loss = linear_cross_entropy(h, w, t, 128, fp8=True)
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert abs(loss.item() - ref.item()) <= 0.005 * ref.item()
    for got, want in ((gh, ref_gh), (gw, ref_gw)):
        assert F.cosine_similarity(got.flatten(), want.flatten(), dim=0) >= 0.99
    assert gh[16:48].abs().max() == 0  # ignored tokens still get no gradient


def test_fp8_head_loss_without_grad_is_the_exact_one():
    """Validation measures the learned weights exactly: no FP8 without autograd."""
    h, w, t = _fp8_inputs()
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, t, 128, fp8=True), _plain(h, w, t),
                                   rtol=1e-6, atol=1e-6)


def test_fp8_head_names_the_dims_that_are_not_multiples_of_16():
    h, w, t = _fp8_inputs(n=250, v=500)
    with pytest.raises(ValueError, match=r"tokens 250, vocab 500 .*run.fp8_head=false"):
        linear_cross_entropy(h, w, t, 128, fp8=True)


def test_fp8_head_compiles_with_autograd():
    h, w, t = _fp8_inputs()
    compiled = torch.compile(linear_cross_entropy, backend="aot_eager", fullgraph=True)
    gh, gw = torch.autograd.grad(compiled(h, w, t, 128, fp8=True), (h, w))
    ref_gh, ref_gw = torch.autograd.grad(linear_cross_entropy(h, w, t, 128, fp8=True), (h, w))
    torch.testing.assert_close(gh, ref_gh)
    torch.testing.assert_close(gw, ref_gw)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs a CUDA GPU with FP8 tensor cores")
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_fp8_head_is_close_to_the_bfloat16_head(compiled):
    """On FP8 tensor cores, eager and under inductor (the trainer compiles the head): loss within 0.5 % and
    gradients at cosine >= 0.99 of the plain bf16 head's, at a 1B-like width."""
    gen = torch.Generator().manual_seed(3)
    n, d, v = 1024, 2048, 8192
    h = torch.randn(n, d, generator=gen).cuda().bfloat16()
    w = (0.02 * torch.randn(v, d, generator=gen)).cuda().bfloat16()
    t = torch.randint(0, v, (n,), generator=gen).cuda()
    hb, wb = h.clone().requires_grad_(), w.clone().requires_grad_()
    fn = torch.compile(linear_cross_entropy, fullgraph=True) if compiled else linear_cross_entropy
    loss = fn(hb, wb, t, 256, fp8=True)
    loss.backward()
    ref_h, ref_w = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = _plain(ref_h, ref_w, t)
    ref.backward()
    assert hb.grad is not None and wb.grad is not None and ref_h.grad is not None and ref_w.grad is not None
    assert wb.grad.dtype == torch.bfloat16 and hb.grad.dtype == torch.bfloat16
    assert abs(loss.item() - ref.item()) <= 0.005 * ref.item()
    for got, want in ((hb.grad, ref_h.grad), (wb.grad, ref_w.grad)):
        assert F.cosine_similarity(got.float().flatten(), want.float().flatten(), dim=0) >= 0.99
