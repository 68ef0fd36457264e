#!/usr/bin/env python3
"""Run torchtitan 0.2.2's own Trainer on one GPU and write a throughput JSON comparable with Kiln's.

    torchrun --standalone --nproc-per-node 1 benchmarks/baselines/torchtitan_runner.py \
        --shape 1b --batch-size 8 --seq-len 2048 --compile --float8 rowwise --out tt_1b.json
    python benchmarks/baselines/torchtitan_runner.py ...        # same: a 1-process group is set up
    python benchmarks/baselines/torchtitan_runner.py --device cpu --shape debug --seq-len 64 --batch-size 2
    python benchmarks/baselines/torchtitan_runner.py --meta-only --shape 8b   # sizes from a meta build

Why 0.2.2: it runs on the GPU machine's torch 2.11 as released; 0.3.0 targets torch 2.14 and
fails there in backward even with API shims, so the runner for it was dropped.

What is torchtitan's (unchanged)
--------------------------------
``torchtitan.train.main(Trainer)`` parses the job from command-line options through its own
``ConfigManager`` (tyro), builds its ``Trainer`` and runs ``Trainer.train()``: the llama3
``Transformer`` built on the meta device (SDPA attention, causal), ``parallelize_llama``
(activation checkpointing -> per-block ``torch.compile`` -> data parallel), its loss
(``cross_entropy_loss``, compiled with ``compile.components`` = model,loss), fused AdamW
(lr 3e-4, wd 0.1), its LR scheduler, grad-norm clipping at 1.0, model converters
(``--model.converters quantize.linear.float8 --quantize.linear.float8.recipe_name
tensorwise|rowwise``: torchao's ``convert_to_float8_training``, ``output`` filtered out), and
its MetricsProcessor logging every step (``loss.item()`` syncs each step anyway).

What this file adds, and why the comparison stays fair
------------------------------------------------------
- A ``TrainSpec`` ``kiln_llama3`` = torchtitan's llama3 spec with Kiln's shapes as flavors, a
  synthetic data loader and no tokenizer. Flavors: ``125m`` and ``1b`` are Kiln's presets
  (``model/presets.py``) written as ``TransformerModelArgs`` (0.2.2 has no 1B flavor; the FFN
  rule gives 2048 and 8192), ``8b`` is torchtitan's stock ``"8B"`` (Llama-3.1-8B). torchtitan's
  llama3 has no weight tying, so every shape is untied (1b: 1.50 B parameters against Kiln's
  tied 1.24 B; compare with Kiln's ``--untied-head`` row). RoPE scaling is off (factor 1) like
  Kiln's presets; it costs the same either way.
- Data: a torchtitan ``ParallelAwareDataloader`` over uniform random ids, each row one document
  of exactly ``seq_len`` tokens (no network on the GPU machine; dense compute does not depend on
  token values), batched in the main process inside ``train_step`` as torchtitan's loader is.
- One GPU, FSDP2 (``--parallel fsdp``, default): torchtitan 0.2.2 applies FSDP only when
  ``dp_shard > 1`` and runs a single GPU under AMP autocast with fp32 weights. Kiln's benchmark
  runs FSDP2 on a 1-rank mesh, so the runner applies torchtitan's own ``apply_fsdp`` (bf16
  params, fp32 reduce: ``training.mixed_precision_param/reduce``) to the 1-rank world mesh
  after ``parallelize_llama`` and drops the autocast, exactly what torchtitan does with
  ``dp_shard > 1``. ``--parallel amp`` keeps torchtitan's stock single-GPU path.
- Stubs only where a package is missing and the import is never used on this path: ``datasets``
  (imported by ``hf_datasets.text_datasets``; pyarrow-heavy wheels), and for the CPU dry run
  ``torch.utils.tensorboard`` (TensorBoard off) and the Triton MoE kernels (no MoE in llama3).
- Timing as ``benchmarks/train_throughput.py`` does: each ``Trainer.train_step`` is timed from
  its call to a device synchronize after it; ``tokens_per_s`` = batch*seq_len over the median of
  the steps after ``--warmup``. MFU uses Kiln's ``model.flops.flops_per_token`` (6 N_matmul +
  12 L d T, the head counted) against 989 TFLOP/s; ``peak_mem_gb`` is torch.cuda's
  ``allocated_bytes.all.peak`` / 1e9 (``max_memory_allocated``), read at each of torchtitan's
  metric logs before it resets the peak, max over the run (on CPU: the process's peak RSS).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

PEAK_FLOPS = 989e12  # H100 SXM dense bf16 spec, used for H200 too (same compute die)
TT_VERSION = "0.2.2"
TRAIN_SPEC = "kiln_llama3"


@dataclasses.dataclass(frozen=True)
class Shape:
    """A llama3 shape as Kiln names it, with the TransformerModelArgs fields that produce it."""

    kiln_preset: str
    """The Kiln preset with the same block shape (model/presets.py)."""
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_hidden: int
    """FFN width; torchtitan derives it from ffn_dim_multiplier and multiple_of (checked on build)."""
    vocab_size: int
    rope_theta: float
    ffn_dim_multiplier: float | None = None
    multiple_of: int = 256
    stock_flavor: str | None = None
    """torchtitan's own llama3 flavor used as is (its RoPE scaling included), else None."""


SHAPES: dict[str, Shape] = {
    "debug": Shape("debug", 64, 2, 4, 2, 256, 512, 10000.0),
    "125m": Shape("125m", 768, 12, 12, 12, 2048, 32000, 10000.0),
    "1b": Shape("1b", 2048, 16, 32, 8, 8192, 128256, 500000.0, ffn_dim_multiplier=1.5),
    "8b": Shape("llama3-8b", 4096, 32, 32, 8, 14336, 128256, 500000.0, 1.3, 1024, stock_flavor="8B"),
}
ALIASES = {"llama3-8b": "8b"}  # Kiln's preset name, so train_throughput.py --baseline torchtitan works
PRECISION = {"none": "bf16", "tensorwise": "fp8-tensorwise", "rowwise": "fp8-rowwise"}

_ARGS: argparse.Namespace | None = None
_SHIMS: list[str] = []
_STATE: dict[str, Any] = {"step_times": [], "tt_metrics": [], "trainer": None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=[*SHAPES, *ALIASES], default="125m")
    p.add_argument("--steps", type=int, default=20, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps first (compile, autotune)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (training.local_batch_size)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="compile.enable: per-TransformerBlock torch.compile and the compiled loss")
    p.add_argument("--float8", choices=sorted(PRECISION), default="none",
                   help="torchao float8 linears via quantize.linear.float8.recipe_name (sm_89+)")
    p.add_argument("--float8-filter", default="output",
                   help="quantize.linear.float8.filter_fqns, comma list (auto_filter_small_kn allowed)")
    p.add_argument("--activation-checkpoint", choices=["none", "selective", "full"], default="none",
                   help="activation_checkpoint.mode (torchtitan's default would be selective)")
    p.add_argument("--selective-ac-option", default="op",
                   help="activation_checkpoint.selective_ac_option: 'op' (per-op SAC) or N (every Nth layer)")
    p.add_argument("--parallel", choices=["fsdp", "amp"], default="fsdp",
                   help="fsdp: torchtitan's apply_fsdp on the 1-rank mesh (bf16 params, fp32 reduce); "
                        "amp: torchtitan's stock 1-GPU path (fp32 weights, bf16 autocast)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="torchtitan_result.json")
    p.add_argument("--dump-folder", default=None, help="job.dump_folder (default: a temp dir)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                   help="cpu = dry run of the whole loop (small shapes; numbers mean nothing)")
    p.add_argument("--meta-only", action="store_true", help="build on the meta device, print sizes, exit")
    p.add_argument("tt_args", nargs="*", help="extra torchtitan options, after `--`")
    args = p.parse_args(argv)
    args.shape = ALIASES.get(args.shape, args.shape)
    return args


def torchtitan_argv(args: argparse.Namespace) -> list[str]:
    """The torchtitan 0.2.2 JobConfig options for `args` (parsed by torchtitan's ConfigManager)."""
    argv = ["--model.name", TRAIN_SPEC, "--model.flavor", args.shape, "--model.hf_assets_path", str(args.dump_folder),
            "--job.dump_folder", str(args.dump_folder), "--training.dataset", "synthetic",
            "--training.local_batch_size", str(args.batch_size), "--training.seq_len", str(args.seq_len),
            "--training.steps", str(args.warmup + args.steps), "--optimizer.lr", str(args.lr),
            "--lr_scheduler.warmup_steps", "2", "--metrics.log_freq", "1", "--debug.seed", str(args.seed),
            "--activation_checkpoint.mode", args.activation_checkpoint]
    if args.activation_checkpoint == "selective":
        argv += ["--activation_checkpoint.selective_ac_option", args.selective_ac_option]
    argv.append("--compile.enable" if args.compile else "--compile.no-enable")
    if args.float8 != "none":
        argv += ["--model.converters", "quantize.linear.float8",
                 "--quantize.linear.float8.recipe_name", args.float8]
        if args.float8_filter:  # torchtitan parses list[str] options as one comma-separated value
            argv += ["--quantize.linear.float8.filter_fqns", args.float8_filter]
        if args.device == "cpu":  # no float8 GEMM on CPU: torchao's emulation (eager only)
            argv.append("--quantize.linear.float8.emulate")
    return [*argv, *args.tt_args]


# ----------------------------------------------------------------------------- environment

def _single_process_env() -> None:
    """torchtitan reads LOCAL_RANK and calls init_process_group(env://): give plain python what
    torchrun --standalone --nproc-per-node 1 would."""
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    if os.environ["WORLD_SIZE"] != "1":
        raise SystemExit("torchtitan_runner measures one GPU: run with --nproc-per-node 1")


def _missing(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def _stub(name: str, why: str, **attrs: Any) -> None:
    """Put a module in sys.modules whose names raise when used: the import succeeds, a call fails loudly."""
    def unavailable(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError(f"{name} is a torchtitan_runner stub ({why})")

    mod = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(mod, key, unavailable if value is None else value)
    sys.modules[name] = mod
    _SHIMS.append(f"{name}: stub ({why})")


def _stub_unused_imports(cpu: bool) -> None:
    if _missing("datasets"):
        _stub("datasets", "not installed; synthetic data", Dataset=type("Dataset", (), {}),
              IterableDataset=type("IterableDataset", (), {}), load_dataset=None)
        _stub("datasets.distributed", "not installed; synthetic data", split_dataset_by_node=None)
    if cpu and _missing("tensorboard"):
        _stub("torch.utils.tensorboard", "cpu dry run, TensorBoard off", SummaryWriter=None)
    if cpu and _missing("triton"):
        _stub("torchtitan.models.moe.kernels", "cpu dry run without triton; llama3 has no MoE",
              generate_permute_indices=None, fill_indices_wrapper=None)


def _force_cpu_device() -> None:
    """CPU dry run: torchtitan picks `_get_available_device_type() or "cuda"` at import time."""
    import torch
    import torch._utils

    torch._utils._get_available_device_type = lambda: "cpu"
    cpu: Any = torch.cpu
    if not hasattr(cpu, "get_device_name"):
        cpu.get_device_name = lambda *a, **k: platform.processor() or "cpu"
    if not hasattr(cpu, "get_device_properties"):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        cpu.get_device_properties = lambda *a, **k: types.SimpleNamespace(total_memory=total)
    for name in ("reset_peak_memory_stats", "empty_cache"):
        if not hasattr(cpu, name):
            setattr(cpu, name, lambda *a, **k: None)
    if not hasattr(cpu, "memory_stats"):
        cpu.memory_stats = lambda *a, **k: {}
    _SHIMS.append("cpu dry run: torch.cpu stands in for torch.cuda")


def _cpu_timeouts_stand_in() -> None:
    """CPU dry run only: torchtitan's set_pg_timeouts passes a CUDA-only barrier argument."""
    import torch.distributed as dist
    import torchtitan.distributed.utils as dist_utils

    def set_pg_timeouts(timeout: Any, parallel_dims: Any) -> None:
        dist.barrier()
        for group in [m.get_group() for m in parallel_dims.get_all_one_dimensional_meshes().values()] + [None]:
            dist.distributed_c10d._set_pg_timeout(timeout, group)

    dist_utils.set_pg_timeouts = set_pg_timeouts
    _SHIMS.append("cpu dry run: set_pg_timeouts without device_ids in its barrier")


# ----------------------------------------------------------------------------- torchtitan extensions

def model_args(shape: Shape) -> Any:
    """TransformerModelArgs for `shape`: torchtitan's stock flavor, or Kiln's preset written as one."""
    import copy

    from torchtitan.models.llama3 import TransformerModelArgs, llama3_args
    from torchtitan.models.llama3.model.args import RoPEScalingArgs

    if shape.stock_flavor is not None:
        return copy.deepcopy(llama3_args[shape.stock_flavor])
    return TransformerModelArgs(
        dim=shape.dim, n_layers=shape.n_layers, n_heads=shape.n_heads, n_kv_heads=shape.n_kv_heads,
        vocab_size=shape.vocab_size, ffn_dim_multiplier=shape.ffn_dim_multiplier, multiple_of=shape.multiple_of,
        rope_theta=shape.rope_theta, rope_scaling_args=RoPEScalingArgs(scaling_factor=1.0))


def _synthetic_dataloader(dp_world_size: int, dp_rank: int, tokenizer: Any, job_config: Any) -> Any:
    """torchtitan's ParallelAwareDataloader over endless rows of uniform ids, one document per row."""
    import torch
    from torch.utils.data import IterableDataset
    from torchtitan.components.dataloader import ParallelAwareDataloader

    vocab = SHAPES[job_config.model.flavor].vocab_size
    seq_len, seed = job_config.training.seq_len, (job_config.debug.seed or 0) + dp_rank

    class SyntheticTokens(IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(seed)
            while True:
                ids = torch.randint(0, vocab, (seq_len + 1,), generator=g, dtype=torch.long)
                yield {"input": ids[:-1]}, ids[1:]

    dl = job_config.training.dataloader
    return ParallelAwareDataloader(SyntheticTokens(), dp_rank=dp_rank, dp_world_size=dp_world_size,
                                   batch_size=job_config.training.local_batch_size,
                                   num_workers=dl.num_workers, pin_memory=dl.pin_memory)


def _parallelize(model: Any, parallel_dims: Any, job_config: Any) -> Any:
    """torchtitan's parallelize_llama, then (``--parallel fsdp``) its apply_fsdp on the 1-rank mesh."""
    from torchtitan.config import TORCH_DTYPE_MAP
    from torchtitan.models.llama3.infra.parallelize import apply_fsdp, parallelize_llama
    from torchtitan.tools.logging import logger

    model = parallelize_llama(model, parallel_dims, job_config)
    if _ARGS is not None and _ARGS.parallel == "fsdp" and not parallel_dims.fsdp_enabled:
        training = job_config.training
        apply_fsdp(model, parallel_dims.world_mesh, param_dtype=TORCH_DTYPE_MAP[training.mixed_precision_param],
                   reduce_dtype=TORCH_DTYPE_MAP[training.mixed_precision_reduce], pp_enabled=False,
                   cpu_offload=training.enable_cpu_offload,
                   reshard_after_forward_policy=job_config.parallelism.fsdp_reshard_after_forward)
        logger.info("torchtitan_runner: applied torchtitan's FSDP2 to the 1-rank world mesh")
    return model


def register_train_spec(parallel: str) -> None:
    """Register ``kiln_llama3``: torchtitan's llama3 TrainSpec with our flavors, loader and no tokenizer."""
    from torchtitan.models import llama3
    from torchtitan.protocols.train_spec import register_train_spec as register

    spec = dataclasses.replace(llama3.get_train_spec(), model_args={k: model_args(s) for k, s in SHAPES.items()},
                               parallelize_fn=_parallelize, build_dataloader_fn=_synthetic_dataloader,
                               build_tokenizer_fn=None, build_validator_fn=None, state_dict_adapter=None)
    register(TRAIN_SPEC, spec)
    if parallel == "fsdp":  # FSDP casts the params: no autocast on top (torchtitan's dp_shard > 1 path)
        import torchtitan.distributed.utils as dist_utils

        dist_utils.maybe_enable_amp = lambda *a, **k: contextlib.nullcontext()
        _SHIMS.append("parallel=fsdp: torchtitan's apply_fsdp on the 1-rank world mesh, no autocast")


# ----------------------------------------------------------------------------- measurement hooks

def _install_hooks(cuda: bool) -> None:
    import torch
    from torchtitan.components import metrics as tt_metrics
    from torchtitan.train import Trainer

    stock_step = Trainer.train_step

    def timed_train_step(self: Any, data_iterator: Any) -> Any:
        _STATE["trainer"] = self
        started = time.perf_counter()
        out = stock_step(self, data_iterator)
        if cuda:
            torch.cuda.synchronize()
        _STATE["step_times"].append(time.perf_counter() - started)
        return out

    Trainer.train_step = timed_train_step

    class Capture(tt_metrics.BaseLogger):
        """Tees torchtitan's per-step metrics; reads the allocator peak before torchtitan resets it."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def log(self, metrics: dict[str, Any], step: int) -> None:
            rec = {"step": step, **{k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}}
            if cuda:
                rec["allocated_peak_bytes"] = torch.cuda.memory_stats().get("allocated_bytes.all.peak", 0)
            _STATE["tt_metrics"].append(rec)
            self.inner.log(metrics, step)

        def close(self) -> None:
            self.inner.close()

    stock_init = tt_metrics.MetricsProcessor.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        stock_init(self, *args, **kwargs)
        self.logger = Capture(self.logger)

    tt_metrics.MetricsProcessor.__init__ = init


# ----------------------------------------------------------------------------- FLOPs (Kiln's definition)

def kiln_flops_per_token(shape: Shape, seq_len: int) -> tuple[float, int, str]:
    """(flops_per_token, n_matmul_params, source): Kiln's model.flops when importable, else the same formula."""
    hd = shape.dim // shape.n_heads
    attention = 2 * shape.dim * shape.n_heads * hd + 2 * shape.dim * shape.n_kv_heads * hd  # wq, wo; wk, wv
    per_layer = attention + 3 * shape.dim * shape.ffn_hidden
    n_matmul = shape.n_layers * per_layer + shape.vocab_size * shape.dim
    flops = float(6 * n_matmul + 12 * shape.n_layers * shape.n_heads * hd * seq_len)
    repo = str(Path(__file__).resolve().parents[2])
    sys.path.insert(0, repo)
    try:
        from model.flops import flops_per_token
        from model.presets import get_preset
    except ImportError:
        return flops, n_matmul, "formula in torchtitan_runner.py"
    finally:
        sys.path.remove(repo)
    kiln = flops_per_token(get_preset(shape.kiln_preset, max_seq_len=max(seq_len, 1)), seq_len)
    if abs(kiln - flops) > 1e-6 * flops:
        raise AssertionError(f"Kiln flops {kiln} != runner formula {flops} for {shape.kiln_preset}")
    return kiln, n_matmul, "kiln model.flops.flops_per_token"


# ----------------------------------------------------------------------------- main

def _prepare_dump_folder(args: argparse.Namespace) -> None:
    """Resolve the dump folder and the device (the torchtitan options name both)."""
    if args.dump_folder is None:
        import tempfile

        args.dump_folder = tempfile.mkdtemp(prefix="tt_runner_")
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"


def _prepare(args: argparse.Namespace) -> None:
    """Everything that must happen before torchtitan is imported (device type, stubs), then register."""
    global _ARGS
    _ARGS = args
    if args.device == "cpu":
        _force_cpu_device()
    _stub_unused_imports(cpu=args.device == "cpu")
    register_train_spec(args.parallel)
    if args.device == "cpu":
        _cpu_timeouts_stand_in()


def meta_only(args: argparse.Namespace) -> dict[str, Any]:
    """Build the flavor on the meta device through torchtitan's TrainSpec; check the FFN width; no process group."""
    import torch
    from torchtitan.config import ConfigManager
    from torchtitan.protocols.train_spec import get_train_spec

    job = ConfigManager().parse_args(torchtitan_argv(args))
    spec, shape = get_train_spec(TRAIN_SPEC), SHAPES[args.shape]
    margs = spec.model_args[args.shape]
    margs.update_from_config(job)
    with torch.device("meta"):
        model = spec.model_cls(margs)
    hidden = model.layers["0"].feed_forward.w1.out_features
    if hidden != shape.ffn_hidden:
        raise AssertionError(f"{args.shape}: torchtitan FFN width {hidden} != {shape.ffn_hidden}")
    n_params, tt_flops = margs.get_nparams_and_flops(model, args.seq_len)
    flops, n_matmul, src = kiln_flops_per_token(shape, args.seq_len)
    return {"shape": args.shape, "flavor": shape.stock_flavor or f"{TRAIN_SPEC}/{args.shape}", "params": n_params,
            "ffn_hidden": hidden, "n_matmul_params": n_matmul, "flops_per_token": flops, "flops_source": src,
            "flops_per_token_torchtitan": tt_flops, "job_converters": list(job.model.converters),
            "activation_checkpoint": job.activation_checkpoint.mode, "compile": job.compile.enable}


def _max_rss_gb() -> float:
    """CPU dry run: the process's peak resident set, as Kiln's trainer.metrics.peak_memory_gb reports on CPU."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1e9 if sys.platform == "darwin" else 1e6)


def result_row(args: argparse.Namespace, times: list[float], wall: float) -> dict[str, Any]:
    """The output JSON: train_throughput.py's metric keys, gpu_frontier's row keys, and torchtitan's own logs."""
    import torch
    import torchtitan
    from torch.distributed.fsdp import FSDPModule

    shape, cuda = SHAPES[args.shape], args.device == "cuda"
    timed = times[args.warmup:]
    if not timed or not all(math.isfinite(t) for t in timed):
        raise SystemExit(f"{len(times)} steps ran; no finite step left after --warmup {args.warmup}")
    tokens_per_step = args.batch_size * args.seq_len
    tps = tokens_per_step / statistics.median(timed)
    flops, n_matmul, flops_src = kiln_flops_per_token(shape, args.seq_len)
    trainer, logs = _STATE["trainer"], _STATE["tt_metrics"]
    later = [m for m in logs if m["step"] > args.warmup]

    def med(key: str) -> float | None:
        vals = [m[key] for m in later if key in m]
        return statistics.median(vals) if vals else None

    peak = max((m.get("allocated_peak_bytes", 0) for m in logs), default=0)
    fsdp = bool(trainer) and isinstance(trainer.model_parts[0], FSDPModule)
    if fsdp != (args.parallel == "fsdp"):
        raise SystemExit(f"--parallel {args.parallel} but FSDP applied = {fsdp}")
    precision = PRECISION[args.float8]
    return {
        "system": f"torchtitan {TT_VERSION}", "version": getattr(torchtitan, "__version__", TT_VERSION),
        "torch": torch.__version__, "device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
        "shape": args.shape, "preset": shape.kiln_preset, "flavor": shape.stock_flavor or f"{TRAIN_SPEC}/{args.shape}",
        "vocab_size": shape.vocab_size, "seq_len": args.seq_len, "micro_batch": args.batch_size,
        "micro_batch_size": args.batch_size, "world_size": 1, "compile": args.compile, "parallel": args.parallel,
        "mixed_precision": ("FSDP2 param=bf16 reduce=fp32 on a 1-rank mesh (fp32 master weights)"
                            if args.parallel == "fsdp" else "AMP bf16 autocast, fp32 weights (torchtitan 1-GPU)"),
        "fsdp_applied": fsdp, "precision": precision,
        "float8_filter_fqns": args.float8_filter if args.float8 != "none" else None,
        "fused_loss": False, "tied": False, "tie_embeddings": False,
        "activation_checkpointing": args.activation_checkpoint,
        "selective_ac_option": args.selective_ac_option if args.activation_checkpoint == "selective" else None,
        "params": sum(p.numel() for m in trainer.model_parts for p in m.parameters()) if trainer else None,
        "n_matmul_params": n_matmul, "tokens_per_step": tokens_per_step, "warmup_steps": args.warmup,
        "timed_steps": len(timed), "step_time_s_median": statistics.median(timed),
        "step_time_s_mean": statistics.fmean(timed), "step_times_s": [round(t, 6) for t in times],
        "tokens_per_s": tps, "tokens_per_s_per_device": tps,
        "tokens_per_s_mean": tokens_per_step / statistics.fmean(timed),
        "flops_per_token": flops, "flops_source": flops_src, "peak_flops": PEAK_FLOPS, "mfu": tps * flops / PEAK_FLOPS,
        "peak_mem_gb": peak / 1e9 if cuda else _max_rss_gb(),
        "loss_first": logs[0].get("loss_metrics/global_avg_loss") if logs else None,
        "loss_last": logs[-1].get("loss_metrics/global_avg_loss") if logs else None,
        "torchtitan_logged": {"tps_median": med("throughput(tps)"), "mfu_pct_median": med("mfu(%)"),
                              "max_reserved_gib_max": max((m.get("memory/max_reserved(GiB)", 0.0) for m in later),
                                                          default=None),
                              "num_flops_per_token": (trainer.metrics_processor.num_flops_per_token
                                                      if trainer else None)},
        "float8_linears": sum(type(m).__name__ == "Float8Linear" for p in (trainer.model_parts if trainer else [])
                              for m in p.modules()),
        "wall_s": wall, "compat_shims": _SHIMS, "torchtitan_argv": sys.argv[1:],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _prepare_dump_folder(args)
    # Before torchtitan is imported: ConfigManager.parse_args binds sys.argv[1:] as its default
    # argument when torchtitan.config is imported, and torchtitan's main() calls it without one.
    sys.argv = [sys.argv[0], *torchtitan_argv(args)]
    _prepare(args)
    if args.meta_only:
        print(json.dumps(meta_only(args), indent=2))
        return 0
    import torchtitan.train

    _single_process_env()
    _install_hooks(cuda=args.device == "cuda")
    started = time.perf_counter()
    torchtitan.train.main(torchtitan.train.Trainer)
    result = result_row(args, _STATE["step_times"], time.perf_counter() - started)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"torchtitan {TT_VERSION} {args.shape} {result['precision']} bs={args.batch_size} T={args.seq_len} "
          f"compile={args.compile} ac={args.activation_checkpoint} {args.parallel}: {result['tokens_per_s']:,.0f} "
          f"tok/s, MFU {100 * result['mfu']:.1f}%, peak {result['peak_mem_gb']} GB -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
