"""The fused loss with and without its Triton softmax pass (`model.softmax_xent`), same run, one GPU.

    python benchmarks/softmax_xent_speed.py --out softmax_xent.json          # 125M's head at micro-batch 64

Times forward + backward of the compiled `model.fused_loss.linear_cross_entropy` (what the
trainer's compiled head runs) on random bf16 hidden states and weights of the head's shape:
``kernel`` with the Triton pass (`softmax_xent.applies` patched to True, so vocabularies above
its `MAX_VOCAB` can be measured too), ``inductor`` with it patched to False: Inductor's kernel. Each row: median
milliseconds per call over ``--iters`` calls after warm-up, and the loss (the two must agree).
Also ``chunk_pass_us``: the Triton pass alone on one chunk's logits, with the GB/s of its one
read and one write. Speed is a figure for `benchmarks/`, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model import softmax_xent  # noqa: E402
from model.fused_loss import IGNORE_INDEX, default_chunk_size, linear_cross_entropy  # noqa: E402


def _time_ms(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def _fused_loss_row(fn, h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, chunk: int, iters: int) -> dict:
    """Median ms of one forward + backward of the fused loss `fn`, and its last loss."""
    losses = []

    def step() -> None:
        h.grad = w.grad = None
        loss = fn(h, w, t, chunk)
        loss.backward()
        losses.append(float(loss.detach()))

    for _ in range(3):  # compile and warm up
        step()
    return {"ms": _time_ms(step, iters), "loss": losses[-1]}


def bench(tokens: int, dim: int, vocab: int, chunk: int, iters: int) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(tokens, dim, device="cuda", generator=gen).bfloat16().requires_grad_()
    w = (0.02 * torch.randn(vocab, dim, device="cuda", generator=gen)).bfloat16().requires_grad_()
    t = torch.randint(0, vocab, (tokens,), device="cuda", generator=gen)
    t[: tokens // 50] = IGNORE_INDEX
    rows: dict[str, dict] = {}
    real_applies = softmax_xent.applies
    for name, applies in (("kernel", lambda logits: True), ("inductor", lambda logits: False)):
        softmax_xent.applies = applies
        torch._dynamo.reset()
        rows[name] = _fused_loss_row(torch.compile(linear_cross_entropy), h, w, t, chunk, iters)
        print(f"{name}: {rows[name]['ms']:.3f} ms, loss {rows[name]['loss']:.6f}", flush=True)
    softmax_xent.applies = real_applies
    logits = (h[:chunk].detach() @ w.detach().t()).contiguous()
    inv = torch.ones((), device="cuda")
    for _ in range(3):
        softmax_xent.softmax_xent(logits, t[:chunk], inv, IGNORE_INDEX)
    pass_us = 1e3 * _time_ms(lambda: softmax_xent.softmax_xent(logits, t[:chunk], inv, IGNORE_INDEX), iters)
    moved = 2 * logits.numel() * logits.element_size()
    return {"tokens": tokens, "dim": dim, "vocab": vocab, "chunk": chunk, "iters": iters, "rows": rows,
            "speedup": rows["inductor"]["ms"] / rows["kernel"]["ms"],
            "loss_rel_diff": abs(rows["kernel"]["loss"] - rows["inductor"]["loss"]) / abs(rows["inductor"]["loss"]),
            "chunk_pass_us": pass_us, "chunk_pass_gb_per_s": moved / pass_us / 1e3}


def main() -> int:
    p = argparse.ArgumentParser(description="The fused loss with and without its Triton softmax pass")
    p.add_argument("--tokens", type=int, default=64 * 2048, help="tokens per call (125M at micro-batch 64)")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--chunk", type=int, default=0, help="tokens per loss chunk (0 = the trainer's default)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if not torch.cuda.is_available() or not softmax_xent.HAVE_TRITON:
        raise SystemExit("softmax_xent_speed.py: needs a CUDA GPU and triton")
    result = bench(args.tokens, args.dim, args.vocab, args.chunk or default_chunk_size(args.vocab), args.iters)
    result.update(device=torch.cuda.get_device_name(), torch=torch.__version__)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
