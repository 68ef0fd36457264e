#!/usr/bin/env python3
"""Fallback baseline: run LitGPT's own pretraining loop on one GPU, writing the same JSON as torchtitan_runner.py.

    python benchmarks/baselines/litgpt_runner.py --shape 125m --steps 30 --warmup 10 --seq-len 2048 \
        --batch-size 16 --compile --out litgpt_125m.json

Why a fallback: torchtitan 0.3.0 is released against torch 2.14 and needs two small shims to
import and run on torch 2.11 (see torchtitan_runner.py). LitGPT 0.5.13 declares torch>=2.7 and
uses only long-standing public torch APIs (SDPA, torch.compile, Fabric), so it runs on 2.11 as is.

How it drives LitGPT: the runner calls ``litgpt.pretrain.setup()`` (what ``litgpt pretrain``
runs) with a ``litgpt.Config``, ``TrainArgs``/``EvalArgs`` and a ``DataModule``. Everything on the
hot path is LitGPT's: its ``GPT`` model (fused QKV, SDPA causal attention, ``LLaMAMLP`` SwiGLU,
RMSNorm, RoPE), its weight init, Lightning Fabric with precision ``bf16-mixed`` (fp32 weights,
autocast to bf16; single-device strategy, no FSDP on one GPU), ``torch.compile`` of the whole
model (LitGPT always compiles; ``--no-compile`` makes ``torch.compile`` the identity for the
run), fused AdamW, gradient clipping at 1.0, cosine LR schedule, its ``fit()`` loop and its
Lightning ``ThroughputMonitor`` (tokens/s, and MFU when Lightning knows the GPU).

Shapes: "125m" is a ``Config`` with Kiln's 125m preset (768/12/12, FFN 2048, vocab 32000, untied);
"1b" is LitGPT's stock ``Llama-3.2-1B`` config with ``train.tie_embeddings=True`` (as Llama-3.2-1B
and Kiln's 1b preset are tied). ``block_size`` is set to ``--seq-len`` so LitGPT's FLOP
measurement and RoPE cache use the trained length.

What this file adds: a ``DataModule`` of uniform random token rows (seq_len + 1 tokens each;
LitGPT's loop slices inputs/targets itself), since the GPU machine has no network; no
tokenizer is needed (``tokenizer_dir=None``). ``litgpt.pretrain.save_checkpoint`` is replaced by a
no-op (the final checkpoint of a 1B model with optimizer state is ~15 GB of disk I/O that is
not part of training throughput). Timing: LitGPT logs every iteration (``log_interval=1``), which
already syncs (``running_loss.compute().item()``, enqueued after the optimizer step); the runner
wraps ``Fabric.log_dict`` to synchronise and stamp the time, so a step is the gap between
consecutive stamps, including batch loading. ``tokens_per_s`` = batch*seq_len / median step
time after ``--warmup`` steps; MFU uses Kiln's flops_per_token against 989e12, exactly as in
torchtitan_runner.py; ``peak_mem_gb`` is torch.cuda.max_memory_allocated() / 1e9.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torchtitan_runner import H100_BF16_PEAK, SHAPES, kiln_flops_per_token  # noqa: E402

_STATE: dict[str, Any] = {"stamps": [], "metrics": [], "t0": None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="125m")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="LitGPT compiles the whole model (its only mode); --no-compile runs it eagerly")
    p.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "bf16-true", "32-true"])
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="litgpt_result.json")
    p.add_argument("--out-dir", default=None, help="LitGPT out_dir (logs); default: a temp dir")
    return p.parse_args(argv)


def build_config(shape_name: str, seq_len: int):
    from litgpt import Config

    s = SHAPES[shape_name]
    if shape_name == "1b":
        return Config.from_name("Llama-3.2-1B", block_size=seq_len)
    return Config(name=f"kiln-{shape_name}", block_size=seq_len, vocab_size=s["vocab_size"],
                  padded_vocab_size=s["vocab_size"], n_layer=s["n_layers"], n_embd=s["dim"], n_head=s["n_heads"],
                  n_query_groups=s["n_kv_heads"], rotary_percentage=1.0, parallel_residual=False, bias=False,
                  norm_class_name="RMSNorm", norm_eps=1e-5, mlp_class_name="LLaMAMLP",
                  intermediate_size=s["ffn_hidden"], rope_base=int(s["rope_theta"]))


def make_data_module(vocab_size: int, seed: int):
    import torch
    from litgpt.data import DataModule
    from torch.utils.data import DataLoader, IterableDataset

    class RandomRows(IterableDataset):
        def __init__(self, length: int, n: int | None) -> None:
            self.length, self.n = length, n

        def __iter__(self):
            g = torch.Generator().manual_seed(seed)
            i = 0
            while self.n is None or i < self.n:
                yield torch.randint(0, vocab_size, (self.length,), generator=g, dtype=torch.long)
                i += 1

    class SyntheticTokens(DataModule):
        """Uniform random token rows of max_seq_length + 1 (LitGPT shifts inputs/targets itself)."""

        def __init__(self) -> None:
            super().__init__()
            self.batch_size, self.max_seq_length = 1, 2048

        def connect(self, tokenizer=None, batch_size: int = 1, max_seq_length: int | None = None, **kw) -> None:
            self.batch_size = batch_size
            self.max_seq_length = max_seq_length or self.max_seq_length

        def train_dataloader(self) -> DataLoader:
            return DataLoader(RandomRows(self.max_seq_length + 1, None), batch_size=self.batch_size)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(RandomRows(self.max_seq_length + 1, 2 * self.batch_size), batch_size=self.batch_size)

    return SyntheticTokens()


def install_hooks(compile_model: bool) -> None:
    import lightning as L
    import litgpt.pretrain as pretrain
    import torch

    cuda = torch.cuda.is_available()
    orig_log_dict = L.Fabric.log_dict

    def log_dict(self, metrics, step=None):
        if "iter_time" in metrics:  # a training-iteration log (not validation)
            if cuda:
                torch.cuda.synchronize()
            _STATE["stamps"].append(time.perf_counter())
            _STATE["metrics"].append({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        return orig_log_dict(self, metrics, step=step)

    L.Fabric.log_dict = log_dict

    orig_barrier = L.Fabric.barrier

    def barrier(self, *a, **k):  # fit() calls barrier() right before its loop: start the clock there
        out = orig_barrier(self, *a, **k)
        if cuda:
            torch.cuda.synchronize()
        _STATE["t0"] = time.perf_counter()
        return out

    L.Fabric.barrier = barrier
    pretrain.save_checkpoint = lambda *a, **k: None
    if not compile_model:
        torch.compile = lambda model=None, *a, **k: model  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import litgpt
    import torch
    from litgpt.args import EvalArgs, TrainArgs
    from litgpt.pretrain import setup

    install_hooks(args.compile)
    shape = SHAPES[args.shape]
    cfg = build_config(args.shape, args.seq_len)
    total = args.warmup + args.steps
    tokens_per_step = args.batch_size * args.seq_len
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="litgpt_runner_"))
    os.environ.setdefault("LITGPT_DISABLE_RICH", "1")
    t_start = time.perf_counter()
    setup(
        model_name=cfg.name,
        model_config=cfg,
        out_dir=out_dir,
        precision=args.precision,
        data=make_data_module(shape["vocab_size"], args.seed),
        train=TrainArgs(save_interval=None, log_interval=1, global_batch_size=args.batch_size,
                        micro_batch_size=args.batch_size, max_tokens=total * tokens_per_step, max_norm=1.0,
                        lr_warmup_steps=2, min_lr=args.lr / 10, tie_embeddings=shape["tie"],
                        max_seq_length=args.seq_len),
        eval=EvalArgs(interval=10**9, max_iters=1, initial_validation=False, final_validation=False),
        optimizer={"class_path": "torch.optim.AdamW",
                   "init_args": {"lr": args.lr, "weight_decay": 0.1, "betas": (0.9, 0.95)}},
        devices=1,
        logger_name="csv",
        seed=args.seed,
    )
    wall = time.perf_counter() - t_start

    stamps, t0 = _STATE["stamps"], _STATE["t0"]
    times = [b - a for a, b in zip([t0, *stamps[:-1]], stamps, strict=True)]
    timed = times[args.warmup:]
    if not timed:
        raise SystemExit(f"only {len(times)} steps ran; nothing left after --warmup {args.warmup}")
    med = statistics.median(timed)
    tps = tokens_per_step / med
    flops, n_matmul, flops_src = kiln_flops_per_token(shape, args.seq_len)
    logged = [m for m in _STATE["metrics"] if m.get("iter", 0) > args.warmup]
    cuda = torch.cuda.is_available()

    def med_of(key: str) -> float | None:
        vals = [m[key] for m in logged if key in m]
        return statistics.median(vals) if vals else None

    from litgpt.model import GPT

    with torch.device("meta"):
        meta = GPT(cfg)
        if shape["tie"]:
            meta.transformer.wte.weight = meta.lm_head.weight
    n_params = sum(p.numel() for p in meta.parameters())
    result = {
        "system": "litgpt",
        "version": getattr(litgpt, "__version__", None) or _dist_version("litgpt"),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
        "shape": args.shape,
        "litgpt_config": cfg.name,
        "params": n_params,
        "n_matmul_params": n_matmul,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "tokens_per_step": tokens_per_step,
        "compile": args.compile,
        "precision": f"Fabric {args.precision} (single device, no FSDP)",
        "activation_checkpointing": "none",
        "warmup_steps": args.warmup,
        "timed_steps": len(timed),
        "step_time_s_median": med,
        "step_time_s_mean": statistics.fmean(timed),
        "step_times_s": [round(t, 6) for t in times],
        "tokens_per_s": tps,
        "tokens_per_s_mean": tokens_per_step / statistics.fmean(timed),
        "flops_per_token": flops,
        "flops_source": flops_src,
        "peak_flops": H100_BF16_PEAK,
        "mfu": tps * flops / H100_BF16_PEAK,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
        "litgpt_logged": {
            # Lightning ThroughputMonitor: rolling means over its last 5 logs; items = tokens here
            "tokens_per_sec_median": med_of("device/items_per_sec"),
            "mfu_median": med_of("device/mfu"),
            "flops_per_sec_median": med_of("device/flops_per_sec"),
            "iter_time_s_median": med_of("iter_time"),
            "loss_first": _STATE["metrics"][0].get("loss") if _STATE["metrics"] else None,
            "loss_last": _STATE["metrics"][-1].get("loss") if _STATE["metrics"] else None,
            "metric_keys": sorted(_STATE["metrics"][-1]) if _STATE["metrics"] else [],
        },
        "wall_s": wall,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"litgpt {result['version']} {args.shape} bs={args.batch_size} T={args.seq_len} compile={args.compile}: "
          f"{tps:,.0f} tok/s, MFU {100 * result['mfu']:.1f}%, peak {result['peak_mem_gb']} GB -> {args.out}")
    return 0


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
