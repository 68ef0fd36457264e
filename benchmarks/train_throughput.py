"""Training throughput of Kiln's trainer: tokens/s, MFU and peak memory per configuration.

    python benchmarks/train_throughput.py --preset 1b --seq-len 2048 --micro-batch-size 4   # one H100
    torchrun --standalone --nproc-per-node 8 benchmarks/train_throughput.py --preset 1b       # FSDP, 8 GPUs
    python benchmarks/train_throughput.py --device cpu --preset debug --steps 3              # smoke (tests)
    python benchmarks/train_throughput.py --preset 1b --compile on --precision fp8-rowwise --fused-loss

What is measured: the trainer's own `trainer.loop.optimizer_step` with pretraining's
`trainer.pretrain.lm_loss` (forward, backward, clip, AdamW) on a model built by
`trainer.parallelize.build_model`, fed uniform random token ids from pinned host
memory (dense compute does not depend on token values). After `--warmup` untimed
steps (compile, autotune, allocator warm-up), each of `--steps` steps is timed with a
device synchronize after it; ``tokens_per_s`` is tokens per step over the median step
time (mean reported too), measured as the baselines' runners measure theirs, with the
batches made and pinned before the clock starts (`random_batches`). Then `--steps` more
run back to back with one synchronize at the end, as the trainer runs them (it never
waits for the device between steps): ``tokens_per_s_pipelined`` / ``mfu_pipelined``.

- MFU = tokens_per_s per device x `model.flops_per_token` / peak, with the peak
  `--peak-tflops` = 989 TFLOP/s: the H100 SXM dense bf16 spec (1979 is the sparse
  figure). The same number is used on H200 (same compute die). Practical ceiling: an
  8192^3 bf16 matmul reaches ~790-798 TFLOP/s there, i.e. ~80 % "MFU".
- peak_mem_gb = ``torch.cuda.max_memory_allocated`` / 1e9 on CUDA (process max RSS on CPU).

Variants (one JSON row each): compile off and on (``--compile``), each at the preset's
vocab, then the vocab padding effect at the last compile setting: ``--vocab-sizes``
(default 64000 vs 64001 on CUDA: a vocab one past a multiple of 64 leaves the
embedding and output matmuls misaligned for tensor cores). Precision follows the
trainer: ``--parallel none`` = fp32 weights + bf16 autocast; ``--parallel fsdp`` (the
default on CUDA, also on one GPU) = FSDP2 with bf16 params and fp32 reduce, like
torchtitan's recipe. ``--precision fp8-tensorwise|fp8-rowwise`` converts the block linears to
torchao float8 as ``run.precision`` does (`trainer.float8`; needs an sm_89+ GPU and torchao),
``--fp8-filter all`` converts the small block linears too, ``--fused-loss`` computes the head
and cross-entropy in chunks (``run.fused_loss``), and
``--untied-head`` unties the output head from the embeddings (torchtitan's llama3 is untied),
``--param-dtype bfloat16`` keeps bf16 weights with fp32 AdamW moments (``run.param_dtype``: 12
bytes per parameter instead of 16) and ``--ac-every N`` recomputes only every N-th block.

Baselines plug in as one function per system in `SYSTEMS` taking a `BenchSpec` and
returning the same metrics dict (`METRIC_KEYS`): ``--baseline torchtitan`` runs
``benchmarks/baselines/torchtitan_runner.py`` in a subprocess and maps its JSON.
Results go to ``benchmarks/results/train_throughput-<preset>-<device>-<time>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import torch  # noqa: E402

from kiln.config import load_config  # noqa: E402
from model import count_params, flops_per_token, get_preset  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.loop import optimizer_step, trainable  # noqa: E402
from trainer.metrics import peak_memory_gb  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402
from trainer.parallelize import build_model, init_distributed, register_step_hooks  # noqa: E402
from trainer.pretrain import lm_loss  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
H100_DENSE_BF16_TFLOPS = 989.0
METRIC_KEYS = ("system", "preset", "vocab_size", "seq_len", "micro_batch_size", "world_size", "compile",
               "parallel", "precision", "fused_loss", "tie_embeddings", "tokens_per_step", "step_time_s_median",
               "step_time_s_mean", "tokens_per_s", "tokens_per_s_per_device", "mfu", "peak_mem_gb", "params",
               "flops_per_token")


@dataclass(frozen=True)
class BenchSpec:
    """One measured configuration (the same for every system)."""

    preset: str
    seq_len: int
    micro_batch_size: int
    vocab_size: int
    compile: bool
    steps: int
    warmup: int
    device: str
    parallel: str
    activation_checkpointing: bool
    peak_tflops: float
    precision: str = "bf16"
    fp8_filter: str = "auto"
    fused_loss: bool = False
    untied_head: bool = False
    param_dtype: str = "float32"
    ac_every: int = 1
    compile_mode: str = "default"
    bf16_update: str = "stochastic"
    """With bf16 weights: optim.bf16_update (stochastic rounding, or Kahan residuals)."""
    fused_loss_chunk: int = 0
    """Tokens per chunk of the fused loss (run.fused_loss_chunk); 0 = the trainer's default."""
    fp8_head: bool = False
    """run.fp8_head: the fused loss's head matmuls in FP8 too."""
    sdpa_backend: str = "auto"
    """run.sdpa_backend: auto (cuDNN attention on Hopper) or flash (PyTorch's FlashAttention-2)."""
    profile: str = ""
    """Directory for a PyTorch-profiler table of 3 steps after the timed ones (empty: no profile)."""


def train_config(spec: BenchSpec) -> TrainConfig:
    """The TrainConfig the trainer would run for `spec` (no data or output paths needed here)."""
    max_len = max(get_preset(spec.preset).max_seq_len, spec.seq_len)
    untie = ["model.overrides.tie_embeddings=false"] if spec.untied_head else []
    return load_config(TrainConfig, None, [
        f"model.preset={spec.preset}", f"model.overrides.vocab_size={spec.vocab_size}",
        f"model.overrides.max_seq_len={max_len}", f"data.seq_len={spec.seq_len}",
        f"data.micro_batch_size={spec.micro_batch_size}", f"run.device={spec.device}",
        f"run.compile={str(spec.compile).lower()}", f"run.parallel={spec.parallel}",
        f"run.activation_checkpointing={str(spec.activation_checkpointing).lower()}",
        "run.dtype=bfloat16", "schedule.warmup_steps=0", f"run.steps={spec.warmup + spec.steps}",
        f"run.precision={spec.precision}", f"run.fp8_filter={spec.fp8_filter}",
        f"run.fused_loss={str(spec.fused_loss).lower()}", f"run.param_dtype={spec.param_dtype}",
        f"run.ac_every={spec.ac_every}", f"run.compile_mode={spec.compile_mode}",
        f"run.fused_loss_chunk={spec.fused_loss_chunk}", f"optim.bf16_update={spec.bf16_update}",
        f"run.fp8_head={str(spec.fp8_head).lower()}", f"run.sdpa_backend={spec.sdpa_backend}", *untie,
    ])


BATCH_POOL = 4
"""Distinct batches the benchmark cycles through (dense compute does not depend on token values)."""


def random_batches(spec: BenchSpec, vocab_size: int, rank: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless CPU batches of uniform token ids, shaped like the loader's (x, y).

    Made once and cycled, contiguous and (with CUDA) already pinned. The trainer's host work for a
    batch (the loader's read, `trainer.data.to_device`'s pin) overlaps the device's work on the
    previous step, since its loop never synchronizes between steps; the timed loop here does, so the
    same work would sit between two synchronizes with the device idle. Rows before GPU call 18 had it
    inside the clock: the 125M timed rate then ran 3 % under its back-to-back rate (call 17)."""
    gen = torch.Generator().manual_seed(1234 + rank)
    pin = spec.device == "cuda"  # resolve_defaults has made "auto" concrete
    pool = []
    for _ in range(BATCH_POOL):
        data = torch.randint(0, vocab_size, (spec.micro_batch_size, spec.seq_len + 1), generator=gen)
        x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
        pool.append((x.pin_memory(), y.pin_memory()) if pin else (x, y))
    while True:
        yield from pool


def run_kiln(spec: BenchSpec) -> dict[str, Any]:
    """Time Kiln's optimizer step for `spec`; every rank runs it, rank 0's numbers are reported."""
    cfg = train_config(spec)
    model_cfg = cfg.model_config()
    dist = init_distributed(cfg.run)  # made once per process; later variants reuse the group
    if dist.device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.cuda.reset_peak_memory_stats(dist.device)
    model, raw = build_model(model_cfg, cfg.run, dist)
    optimizer = build_optimizer(raw, cfg.optim)
    register_step_hooks(model, optimizer, cfg.run, dist)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=False)
    batches = random_batches(spec, model_cfg.vocab_size, dist.rank)
    params = trainable(raw)
    step_fn = functools.partial(lm_loss, model, dist=dist)
    step = functools.partial(optimizer_step, model, params, optimizer, scaler, batches, step_fn, accum=1, dist=dist,
                             run=cfg.run, grad_clip=cfg.optim.grad_clip)

    times, retries_at_warmup = [], None
    for i in range(spec.warmup + spec.steps):
        if i == spec.warmup:
            retries_at_warmup = alloc_retries(dist.device)
        started = time.perf_counter()
        step()
        _synchronize(dist.device)
        times.append(time.perf_counter() - started)
    timed = times[spec.warmup:]
    # The trainer itself never waits for the device between steps (the CPU queues the next step
    # while the GPU works); the same steps again with one synchronize at the end give that rate.
    started = time.perf_counter()
    for _ in range(spec.steps):
        step()
    _synchronize(dist.device)
    pipelined = (time.perf_counter() - started) / spec.steps
    memory = {"peak_mem_gb": peak_memory_gb(dist.device),  # before profiling: the measured steps' own
              "alloc_retries": _minus(alloc_retries(dist.device), retries_at_warmup),
              "peak_reserved_gb": torch.cuda.max_memory_reserved(dist.device) / 1e9 if dist.device.type == "cuda"
              else None}
    if spec.profile and dist.is_main:
        profile_steps(step, dist.device, Path(spec.profile), spec)
    tokens_per_step = spec.micro_batch_size * spec.seq_len * dist.world_size
    median = statistics.median(timed)
    per_device = tokens_per_step / median / dist.world_size
    fpt = flops_per_token(model_cfg, spec.seq_len)
    result = {
        "system": "kiln", "preset": spec.preset, "vocab_size": model_cfg.vocab_size, "seq_len": spec.seq_len,
        "micro_batch_size": spec.micro_batch_size, "world_size": dist.world_size, "compile": spec.compile,
        "parallel": dist.mode, "precision": spec.precision, "fp8_filter": spec.fp8_filter,
        "fused_loss": spec.fused_loss,
        "tie_embeddings": model_cfg.tie_embeddings, "tokens_per_step": tokens_per_step,
        "step_time_s_median": median, "step_time_s_mean": statistics.fmean(timed),
        "tokens_per_s": tokens_per_step / median,
        "tokens_per_s_per_device": per_device, "mfu": per_device * fpt / (spec.peak_tflops * 1e12),
        "step_time_s_pipelined": pipelined, "tokens_per_s_pipelined": tokens_per_step / pipelined,
        "mfu_pipelined": tokens_per_step / pipelined / dist.world_size * fpt / (spec.peak_tflops * 1e12),
        **memory, "params": count_params(model_cfg), "flops_per_token": fpt,
        "activation_checkpointing": spec.activation_checkpointing, "ac_every": spec.ac_every,
        "param_dtype": spec.param_dtype, "bf16_update": spec.bf16_update, "compile_mode": spec.compile_mode,
        "fused_loss_chunk": spec.fused_loss_chunk, "fp8_head": spec.fp8_head,
        "sdpa_backend": spec.sdpa_backend, "warmup_steps": spec.warmup,
        "step_times_s": [round(t, 6) for t in times],
    }
    del model, raw, optimizer, step_fn, params
    _release(dist.device)
    return result


def profile_steps(step: Callable[[], Any], device: torch.device, out_dir: Path, spec: BenchSpec) -> Path:
    """Profile 3 steps; write the top kernels by device time (and their share of it) as a text table.

    What a low MFU is made of: how much device time the matmuls get against attention, norms,
    elementwise fusions, the optimizer and idle gaps (device time below the steps' wall time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        _synchronize(device)
    wall = time.perf_counter() - started
    events: list[dict[str, Any]] = []
    if device.type == "cuda":
        with tempfile.TemporaryDirectory() as tmp:
            trace = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(trace))
            events = json.loads(trace.read_text()).get("traceEvents", [])
    timeline = device_timeline(events)
    busy = "device busy: no device events" if timeline is None else (
        f"device busy {timeline[1] / 1e6:.3f} s ({100 * timeline[1] / 1e6 / wall:.1f} %)")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=70)
    name = f"profile-{spec.preset}-mb{spec.micro_batch_size}-{spec.precision}{'-fused' if spec.fused_loss else ''}.txt"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / name
    out.write_text(f"{spec}\n3 steps: wall {wall:.3f} s, {busy}\n\n{table}\n{device_gaps(events) if events else ''}")
    return out


DEVICE_EVENT_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
"""What occupies the device in a chrome trace; "gpu_user_annotation" ranges (``Optimizer.step#...``,
``FSDP::...``) are left out: they span kernels that are already counted."""


def device_timeline(events: list[dict[str, Any]],
                    min_gap_us: float = 5.0) -> tuple[float, float, list[tuple[float, str, str]]] | None:
    """(span, busy, gaps) of a chrome trace's device events, in us: busy is the union of their
    intervals (overlapping kernels count once), gaps the idle stretches >= min_gap_us as (length,
    the event ending last before, the next event), longest first; None without device events."""
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), str(e.get("name", "")))
                   for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_EVENT_CATEGORIES)
    if not spans:
        return None
    busy, gaps = 0.0, []
    first = start = spans[0][0]
    end, last_name = spans[0][1], spans[0][2]  # last_name: the event that ends latest so far
    for s, e, name in spans[1:]:
        if s > end:
            busy += end - start
            if s - end >= min_gap_us:
                gaps.append((s - end, last_name, name))
            start = s
        if e > end:
            end, last_name = e, name
    busy += end - start
    return end - first, busy, sorted(gaps, reverse=True)


def device_gaps(events: list[dict[str, Any]], top: int = 15, min_gap_us: float = 5.0) -> str:
    """Where the device waits, as text: its busy and idle time inside the span of a chrome trace's
    device events, and the longest gaps with the events on each side. Idle time, not kernel time,
    is what CUDA graphs or fewer synchronizes can win back."""
    timeline = device_timeline(events, min_gap_us)
    if timeline is None:
        return "device gaps: no device events in the trace\n"
    span, busy, gaps = timeline
    idle = span - busy
    lines = [f"device gaps: span {span / 1e3:.2f} ms, busy {busy / 1e3:.2f} ms, idle {idle / 1e3:.2f} ms "
             f"({100 * idle / span if span else 0.0:.1f} %) in {len(gaps)} gaps >= {min_gap_us:g} us "
             f"({sum(g for g, _, _ in gaps) / 1e3:.2f} ms)"]
    for gap, before, after in gaps[:top]:
        lines.append(f"  {gap:9.1f} us  after {before[:60]}  before {after[:60]}")
    return "\n".join(lines) + "\n"


def run_torchtitan(spec: BenchSpec) -> dict[str, Any]:
    """torchtitan's own loop via benchmarks/baselines/torchtitan_runner.py (one GPU), mapped to our keys."""
    runner = REPO / "benchmarks" / "baselines" / "torchtitan_runner.py"
    if spec.vocab_size != get_preset(spec.preset).vocab_size:
        raise SystemExit("the torchtitan runner uses each shape's own vocab; run it with --vocab-sizes none")
    if spec.precision != "bf16" or spec.fused_loss:
        raise SystemExit("the torchtitan runner measures bf16 with its plain loss; drop --precision/--fused-loss")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tt.json"
        cmd = [sys.executable, str(runner), "--shape", spec.preset, "--steps", str(spec.steps), "--warmup",
               str(spec.warmup), "--seq-len", str(spec.seq_len), "--batch-size", str(spec.micro_batch_size),
               "--compile" if spec.compile else "--no-compile", "--device", spec.device, "--out", str(out)]
        subprocess.run(cmd, check=True, cwd=REPO)
        tt = json.loads(out.read_text())
    return {**{k: tt.get(k) for k in METRIC_KEYS}, "system": "torchtitan", "preset": spec.preset,
            "vocab_size": spec.vocab_size, "micro_batch_size": spec.micro_batch_size, "world_size": 1,
            "parallel": "fsdp", "precision": "bf16", "fused_loss": False,
            "tokens_per_s_per_device": tt["tokens_per_s"], "raw": tt}


SYSTEMS: dict[str, Callable[[BenchSpec], dict[str, Any]]] = {"kiln": run_kiln, "torchtitan": run_torchtitan}


def _minus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a - b


def alloc_retries(device: torch.device) -> int | None:
    """Times the CUDA caching allocator had to free its cache and retry an allocation (a sync and a
    slowdown each: the sign that a configuration runs at the edge of memory); None off CUDA.
    A row counts those of its timed and pipelined steps."""
    return torch.cuda.memory_stats(device).get("num_alloc_retries", 0) if device.type == "cuda" else None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()  # each variant compiles afresh, not against the previous one's graphs


def variants(args: argparse.Namespace) -> list[BenchSpec]:
    """compile off/on at the preset's vocab, then each --vocab-sizes entry at the last compile setting."""
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    base = BenchSpec(args.preset, args.seq_len, args.micro_batch_size, get_preset(args.preset).vocab_size, False,
                     args.steps, args.warmup, args.device, args.parallel, args.activation_checkpointing,
                     args.peak_tflops, args.precision, args.fp8_filter, args.fused_loss, args.untied_head,
                     args.param_dtype, args.ac_every, args.compile_mode, args.bf16_update, args.fused_loss_chunk,
                     args.fp8_head, args.sdpa_backend, args.profile or "")
    specs = [dataclasses.replace(base, compile=c) for c in compiles]
    extra = [] if args.vocab_sizes == "none" else [int(v) for v in args.vocab_sizes.split(",")]
    specs += [dataclasses.replace(base, compile=compiles[-1], vocab_size=v) for v in extra]
    return list(dict.fromkeys(specs))  # the preset's own vocab may be listed again: measure it once


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the device-dependent defaults, so the JSON records what actually ran."""
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    base_vocab = get_preset(args.preset).vocab_size
    defaults = {
        "device": "cuda" if cuda else "cpu",
        "warmup": 10 if cuda else 1,
        "seq_len": 2048 if cuda else get_preset(args.preset).max_seq_len,
        "compile": "both" if cuda else "off",
        "parallel": "fsdp" if cuda else "none",
        "vocab_sizes": "64000,64001" if cuda else f"{base_vocab},{base_vocab + 1}",
    }
    for key, value in defaults.items():
        if getattr(args, key) in (None, "auto"):
            setattr(args, key, value)
    return args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--preset", default="1b", help="model preset (debug, tiny, 125m, 1b, 7b, llama3-8b, llama3.1-8b)")
    p.add_argument("--seq-len", type=int, default=None, help="default 2048 on CUDA, the preset's max on CPU")
    p.add_argument("--micro-batch-size", type=int, default=4, help="sequences per device per step")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 on CUDA, 1 on CPU)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--compile", choices=["off", "on", "both"], default=None, help="default: both on CUDA, off on CPU")
    p.add_argument("--parallel", choices=["none", "fsdp", "ddp"], default=None,
                   help="default: fsdp on CUDA (bf16 params, also on 1 GPU), none on CPU")
    p.add_argument("--vocab-sizes", default=None,
                   help="comma list for the vocab padding rows (default 64000,64001 on CUDA); 'none' skips them")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--ac-every", type=int, default=1,
                   help="with --activation-checkpointing: recompute every N-th block only (run.ac_every)")
    p.add_argument("--profile", default=None, help="directory: after the timed steps, profile 3 more (text table)")
    p.add_argument("--param-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="run.param_dtype: bfloat16 = bf16 weights, fp32 AdamW moments, stochastic rounding")
    p.add_argument("--bf16-update", choices=["stochastic", "kahan"], default="stochastic",
                   help="optim.bf16_update with bf16 weights: stochastic rounding, or Kahan residuals (+2 B/param)")
    p.add_argument("--precision", choices=["bf16", "fp8-tensorwise", "fp8-rowwise"], default="bf16",
                   help="run.precision: bf16, or torchao float8 block linears (sm_89+ GPU, torchao installed)")
    p.add_argument("--fp8-filter", choices=["auto", "all"], default="auto",
                   help="run.fp8_filter: auto keeps linears below torchao's break-even size in bf16; all converts them")
    p.add_argument("--fused-loss", action="store_true", help="run.fused_loss: chunked head + cross-entropy")
    p.add_argument("--fused-loss-chunk", type=int, default=0,
                   help="run.fused_loss_chunk: tokens per chunk (0 = ~1 GiB of fp32 logits per chunk)")
    p.add_argument("--sdpa-backend", choices=["auto", "flash"], default="auto",
                   help="run.sdpa_backend: flash turns cuDNN attention off so SDPA uses FlashAttention-2")
    p.add_argument("--fp8-head", action="store_true",
                   help="run.fp8_head: the output head's matmuls in FP8 too (needs --precision fp8-* and --fused-loss)")
    p.add_argument("--compile-mode", choices=["default", "tune-kernels", "max-autotune-no-cudagraphs"],
                   default="default", help="run.compile_mode: tune-kernels tunes Inductor's Triton kernels; "
                   "max-autotune also tries Triton GEMMs (slower compile)")
    p.add_argument("--untied-head", action="store_true", help="untie the output head from the embeddings")
    p.add_argument("--peak-tflops", type=float, default=H100_DENSE_BF16_TFLOPS,
                   help="per-device peak for MFU (989 = H100 SXM dense bf16 spec)")
    p.add_argument("--baseline", choices=sorted(SYSTEMS), default="kiln", help="which system to measure")
    p.add_argument("--out", default=None, help="output JSON (default benchmarks/results/train_throughput-...json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = resolve_defaults(parse_args(argv))
    device = args.device
    rank = int(os.environ.get("RANK", 0))
    rows = []
    for spec in variants(args):
        try:
            row = SYSTEMS[args.baseline](spec)
        except torch.cuda.OutOfMemoryError as exc:
            row = {"system": args.baseline, **dataclasses.asdict(spec), "error": f"OOM: {str(exc)[:200]}"}
            _release(torch.device(device))
        rows.append(row)
        if rank == 0:
            print(_summary_line(row), flush=True)
    report = {
        "benchmark": "train_throughput",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "peak_tflops": args.peak_tflops,
        "peak_note": "MFU vs 989 TFLOP/s = H100 SXM dense bf16 spec (1979 is the sparse figure)",
        "args": vars(args), "results": rows,
    }
    if rank == 0:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        out = Path(args.out) if args.out else RESULTS / f"train_throughput-{args.preset}-{device}-{stamp}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"-> {out}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return report


def _summary_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['system']} {row['preset']} vocab={row['vocab_size']} compile={row['compile']}: {row['error']}"
    return (f"{row['system']} {row['preset']} vocab={row['vocab_size']} T={row['seq_len']} "
            f"mb={row['micro_batch_size']} x{row['world_size']} compile={row['compile']} {row['parallel']} "
            f"{row['precision']}{' fused-loss' if row['fused_loss'] else ''}: "
            f"{row['tokens_per_s']:,.0f} tok/s ({row['tokens_per_s_per_device']:,.0f}/device), "
            f"MFU {100 * row['mfu']:.1f}%, peak {row['peak_mem_gb']:.2f} GB")


if __name__ == "__main__":
    main()
