#!/usr/bin/env python3
"""Run torchtitan's own training loop on one GPU and write a throughput JSON comparable with Kiln's.

    torchrun --standalone --nproc-per-node 1 benchmarks/baselines/torchtitan_runner.py \
        --shape 125m --steps 30 --warmup 10 --seq-len 2048 --batch-size 16 --compile --out tt_125m.json

    python benchmarks/baselines/torchtitan_runner.py ...   # same thing: RANK/WORLD_SIZE/LOCAL_RANK/
                                                           # MASTER_ADDR/MASTER_PORT are set to a
                                                           # single-process group when absent
    python benchmarks/baselines/torchtitan_runner.py --device cpu --shape tiny ...   # CPU dry run
    python benchmarks/baselines/torchtitan_runner.py --meta-only --shape 1b           # build on meta only

How it drives torchtitan
------------------------
This file is used as a torchtitan *config registry*, the extension point torchtitan's own
launcher is built around (``python -m torchtitan.train --module M --config F``). The runner
sets ``sys.argv = ["--module", "__main__", "--config", "kiln_bench", ...]`` and calls
``torchtitan.train.main()`` unchanged, so torchtitan's ConfigManager (tyro) parses the config,
``Trainer.Config.build()`` builds its ``Trainer`` and ``Trainer.train()`` runs its loop.
Everything on the hot path is torchtitan's:

- model: ``torchtitan.models.llama3`` (``Llama3Model``, fused-QKV GQA attention, SwiGLU FFN,
  RMSNorm, complex RoPE), built on the meta device and initialised by torchtitan;
  the 1b shape *is* torchtitan's stock ``"1B"`` flavor (Llama-3.2-1B, tied embeddings);
  the 125m shape is registered as a new entry ``"kiln_125m"`` in ``llama3_configs`` and built by
  the same private helper (``_build_llama3_layers``) the stock flavors use, then obtained through
  ``model_registry()`` exactly like the stock flavors;
- parallelism / precision: ``parallelize_llama`` -> per-block ``torch.compile`` (if enabled) ->
  FSDP2 ``fully_shard`` on a 1-rank mesh with ``MixedPrecisionPolicy(param=bf16, reduce=fp32)``
  (fp32 master weights and AdamW states, bf16 compute: torchtitan's bf16 recipe);
- attention: torchtitan's default for llama3, FlexAttention (block-causal by document,
  compiled by torchtitan with max-autotune); ``--attn varlen`` selects its varlen backend;
- loss: ``ChunkedLossWrapper(CrossEntropyLoss)`` as in the stock llama3 configs;
- optimizer: ``default_adamw`` (fused AdamW, betas 0.9/0.95, wd 0.1), its LR scheduler,
  grad-norm clipping at 1.0, its train_step (incl. CUDA-graph capture of forward+backward,
  on by default in torchtitan 0.3.0; ``--no-cuda-graphs`` turns it off);
- metrics: its MetricsProcessor, logging every step (``log_freq=1``).

What this file adds, and why the comparison stays fair
-----------------------------------------------------
- Data: a ``ParallelAwareDataloader`` subclass (torchtitan's dataloader base, a torchdata
  StatefulDataLoader) yielding uniform random token ids, each sample one document of exactly
  ``seq_len`` tokens (``positions = 0..seq_len-1``). The GPU machine has no network, so C4 cannot
  be streamed, and torchtitan's c4_test lives in its git repo, not its wheel. One document per
  row makes the flex block-causal mask plain causal attention, the same work Kiln's
  ``is_causal`` SDPA does; dense compute does not depend on token values. The batch is built
  in the main process as torchtitan does (num_workers=0), so host-side cost stays in the step.
- Tokenizer: a ``BaseTokenizer`` subclass that only reports the vocab size (the dataloader
  makes ids directly), so no tokenizer files are needed. It never runs in the train step.
- ``datasets`` (needs pyarrow/pandas, ~60 MB of wheels) is imported at top level by
  ``torchtitan.hf_datasets.text_datasets``, which the llama3 config module imports. When the
  package is missing, a stub module that raises on use is put in ``sys.modules`` first. Nothing
  in this run calls it.
- Timing: ``Trainer.train_step`` is wrapped; after each call the runner synchronises the device
  and stamps the time. A step's time is the gap between consecutive stamps, so it includes
  everything torchtitan does per step (batch creation, mask building, H2D copy, fwd/bwd, clip,
  optimizer, LR scheduler, metric logging). ``tokens_per_s`` is batch*seq_len over the median
  step time of the steps after ``--warmup`` (warm-up covers compile, autotune and CUDA-graph
  capture). Per-step synchronisation is what ``log_freq=1`` does anyway (loss.item()).
- MFU uses Kiln's definition (model/flops.py): flops_per_token = 6 * N_matmul
  + 12 * n_layers * dim * seq_len, N_matmul = the block matrices plus the vocab x dim head
  (counted even when tied), against 989e12 (H100 SXM dense bf16; used for H200 too). If Kiln's
  ``model`` package is importable (run from the repo root) its ``ModelConfig`` and
  ``flops_per_token`` are used (and checked against the same formula below). torchtitan's own
  per-step tps and MFU (6 * parameters less the input embedding, norms included, + 12*L*dim*T,
  against its own peak table: 989e12 for H100 SXM and H200) are captured from its metrics dict
  and reported separately.
- ``peak_mem_gb`` is torch.cuda "allocated_bytes.all.peak" / 1e9, Kiln's definition, read
  at each torchtitan metrics log (torchtitan resets the peak after each log), max over steps.

torch-version shims: torchtitan 0.3.0 is released against torch 2.14. It imports
``torch.distributed.fsdp.DataParallelMeshDims`` at module level (not in torch 2.11), which on one
GPU it never constructs (``resolve_fsdp_mesh`` returns ``None`` for a size-1 mesh); and after
step 1 it calls ``torch.distributed.set_timeout`` (not in 2.11 or 2.13), a no-op in effect with
one rank. When missing, the runner installs a stand-in class and maps ``set_timeout`` to
``torch.distributed.distributed_c10d._set_pg_timeout``, and lists what it did in the JSON's
``compat_shims``. This is not torchtitan's supported pairing; see benchmarks/baselines/README.md.
"""

from __future__ import annotations

import argparse
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

H100_BF16_PEAK = 989e12

# Shapes. "125m" and "1b" match Kiln's model/presets.py ("125m": GPT-2-small width, untied,
# vocab 32000; "1b": Llama-3.2-1B, tied). "tiny" is only for CPU dry runs.
SHAPES: dict[str, dict[str, Any]] = {
    "125m": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, ffn_hidden=2048, vocab_size=32000,
                 tie=False, rope_theta=10000.0, flavor="kiln_125m"),
    "1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_hidden=8192, vocab_size=128256,
               tie=True, rope_theta=500000.0, flavor="1B"),  # torchtitan's stock flavor
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=256, vocab_size=512,
                 tie=False, rope_theta=10000.0, flavor="kiln_tiny"),
}

_ARGS: argparse.Namespace | None = None  # read by kiln_bench(), the config-registry function
_SHIMS: list[str] = []
_STATE: dict[str, Any] = {"step_ends": [], "t0": None, "tt_metrics": [], "trainer": None}


# ----------------------------------------------------------------------------- arguments

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="125m")
    p.add_argument("--steps", type=int, default=30, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compile, autotune, graph capture)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (training.local_batch_size)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torchtitan's per-TransformerBlock torch.compile (compile.enable; components model,loss)")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="torchtitan 0.3.0's CUDA-graph capture of forward+backward (its default: on)")
    p.add_argument("--sdpa-attention", action="store_true",
                   help="replace torchtitan's compiled FlexAttention with causal SDPA (see _sdpa_attention_stand_in)")
    p.add_argument("--attn", choices=["flex", "varlen"], default="flex",
                   help="torchtitan attention backend (llama3 default: flex; varlen needs the FA3 package on Hopper)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="torchtitan_result.json")
    p.add_argument("--dump-folder", default=None, help="torchtitan dump_folder (default: a temp dir)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                   help="cpu = dry run of the whole loop on CPU (tiny shapes; no numbers worth reporting)")
    p.add_argument("--meta-only", action="store_true",
                   help="build the model on the meta device through torchtitan's registry, print sizes, exit")
    p.add_argument("tt_args", nargs="*", help="extra torchtitan CLI overrides, after `--`")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- environment

def _single_process_env() -> None:
    """torchtitan reads LOCAL_RANK itself and calls init_process_group(env://): give plain python
    the same environment torchrun --standalone --nproc-per-node 1 would."""
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    if os.environ["WORLD_SIZE"] != "1":
        raise SystemExit("torchtitan_runner measures one GPU: run with --nproc-per-node 1")


def _stub_datasets_if_missing() -> None:
    try:
        import datasets  # noqa: F401
        return
    except ImportError:
        pass

    def _unavailable(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("HF `datasets` is not installed; torchtitan_runner uses synthetic data")

    ds = types.ModuleType("datasets")
    ds.Dataset = type("Dataset", (), {})  # only used in isinstance() checks
    ds.IterableDataset = type("IterableDataset", (), {})
    ds.load_dataset = _unavailable
    dist = types.ModuleType("datasets.distributed")
    dist.split_dataset_by_node = _unavailable
    ds.distributed = dist
    sys.modules["datasets"] = ds
    sys.modules["datasets.distributed"] = dist
    _SHIMS.append("datasets: stub module (package not installed; not used with synthetic data)")


def _torch_compat_shims() -> None:
    """Names torchtitan 0.3.0 imports at module level that older torch lacks but a 1-GPU run never uses."""
    import torch.distributed.fsdp as fsdp

    if not hasattr(fsdp, "DataParallelMeshDims"):
        @dataclasses.dataclass(frozen=True)
        class DataParallelMeshDims:  # torch>=2.12 API; on 1 GPU torchtitan passes None instead
            shard: Any = None
            replicate: Any = None

            def __post_init__(self) -> None:
                raise RuntimeError("DataParallelMeshDims needs torch>=2.12 (multi-GPU spmd_types/full_dtensor "
                                   "FSDP); torchtitan_runner only supports 1 GPU on older torch")

        DataParallelMeshDims.__module__ = "torch.distributed.fsdp"
        fsdp.DataParallelMeshDims = DataParallelMeshDims
        _SHIMS.append("torch.distributed.fsdp.DataParallelMeshDims: stand-in (never constructed on 1 GPU)")

    import inspect

    import torch.nn.attention.flex_attention as flex

    if "separate_full_blocks" not in inspect.signature(flex.create_block_mask).parameters:
        # torch>=2.12 kwarg that torchtitan passes; older torch always keeps full blocks separate
        # (BlockMask.full_kv_num_blocks), which is the kwarg's default behaviour, so dropping it is exact.
        original = flex.create_block_mask

        def create_block_mask(*args: Any, separate_full_blocks: bool = True, **kwargs: Any) -> Any:
            return original(*args, **kwargs)

        flex.create_block_mask = create_block_mask
        _SHIMS.append("flex_attention.create_block_mask: drops separate_full_blocks (torch<2.12)")

    import torch.distributed as dist

    if not hasattr(dist, "set_timeout"):  # torch 2.14 API; torchtitan calls it once, after step 1
        from torch.distributed.distributed_c10d import _set_pg_timeout

        def set_timeout(timeout: Any, group: Any = None) -> None:
            _set_pg_timeout(timeout, group)

        dist.set_timeout = set_timeout
        _SHIMS.append("torch.distributed.set_timeout: -> distributed_c10d._set_pg_timeout")


def _force_cpu_device() -> None:
    """CPU dry run: torchtitan picks `_get_available_device_type() or "cuda"` at import time."""
    import torch
    import torch._utils

    torch._utils._get_available_device_type = lambda: "cpu"
    cpu = torch.cpu
    if not hasattr(cpu, "get_device_name"):
        cpu.get_device_name = lambda *a, **k: platform.processor() or "cpu"
    if not hasattr(cpu, "get_device_properties"):
        cpu.get_device_properties = lambda *a, **k: types.SimpleNamespace(total_memory=os.sysconf("SC_PAGE_SIZE")
                                                                             * os.sysconf("SC_PHYS_PAGES"))
    for name in ("reset_peak_memory_stats", "empty_cache"):
        if not hasattr(cpu, name):
            setattr(cpu, name, lambda *a, **k: None)
    if not hasattr(cpu, "memory_stats"):
        cpu.memory_stats = lambda *a, **k: {}
    _SHIMS.append("cpu dry run: torch.cpu stands in for torch.cuda")


def _sdpa_attention_stand_in(reason: str) -> None:
    """Run torchtitan's attention through causal SDPA (flash on GPU), equal to its flex mask for one-doc rows.

    Used for the CPU dry run (FlexAttention has no CPU backward) and, with ``--sdpa-attention``,
    on a GPU whose torch cannot run torchtitan 0.3.0's compiled FlexAttention backward (torch
    2.11: "tensor ... data is not allocated yet"). It is also the attention kernel Kiln uses,
    so the comparison then measures everything else: model code, FSDP2, compile, loss, optimizer.
    """
    import torch.nn.functional as F
    from torchtitan.models.common.attention import FlexAttention

    def causal_sdpa(q, k, v, *, score_mod=None, block_mask=None, scale=None, enable_gqa=False, return_aux=None,
                    kernel_options=None):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=enable_gqa)
        return out, None  # aux (lse) is only read when out_transform is set, never for llama3

    FlexAttention.compiled_flex_attn = staticmethod(causal_sdpa)
    _SHIMS.append(f"causal SDPA stands in for FlexAttention ({reason})")


def _cpu_timeouts_stand_in() -> None:
    """CPU dry run only: torchtitan's timeout setup passes a CUDA-only barrier argument."""
    import torch.distributed as dist
    import torchtitan.distributed.utils as dist_utils

    def set_pg_timeouts(timeout, parallel_dims):  # torchtitan's, minus barrier(device_ids=["cpu"])
        dist.barrier()
        groups = [m.get_group() for m in parallel_dims.get_all_one_dimensional_meshes().values()] + [None]
        for group in groups:
            dist.set_timeout(timeout, group)

    dist_utils.set_pg_timeouts = set_pg_timeouts
    _SHIMS.append("cpu dry run: set_pg_timeouts without device_ids in its barrier")


# ----------------------------------------------------------------------------- torchtitan extensions

def _define_components() -> None:
    """Subclasses of torchtitan's extension points; defined after the imports are patched."""
    import torch
    from torch.utils.data import IterableDataset
    from torchtitan.components.dataloader import ParallelAwareDataloader
    from torchtitan.components.tokenizer import BaseTokenizer

    class SyntheticTokenizer(BaseTokenizer):
        """Reports a vocab size; the synthetic dataloader produces ids directly."""

        @dataclasses.dataclass(kw_only=True, slots=True)
        class Config(BaseTokenizer.Config):
            vocab_size: int = 32000

        def __init__(self, config: SyntheticTokenizer.Config, *, tokenizer_path: str | None = None) -> None:
            super().__init__()
            self.vocab_size = config.vocab_size
            self.bos_id, self.eos_id = 0, config.vocab_size - 1

        def encode(self, *args: Any, **kwargs: Any) -> list[int]:
            raise NotImplementedError("synthetic tokenizer: data is generated as token ids")

        def decode(self, *args: Any, **kwargs: Any) -> str:
            raise NotImplementedError("synthetic tokenizer: data is generated as token ids")

        def get_vocab_size(self) -> int:
            return self.vocab_size

    class SyntheticTokens(IterableDataset):
        """Endless rows of uniform random ids; each row is one document of seq_len tokens."""

        def __init__(self, vocab_size: int, seq_len: int, seed: int) -> None:
            self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed

        def __iter__(self):
            g = torch.Generator().manual_seed(self.seed)
            positions = torch.arange(self.seq_len, dtype=torch.long)
            while True:
                ids = torch.randint(0, self.vocab_size, (self.seq_len + 1,), generator=g, dtype=torch.long)
                yield {"input": ids[:-1], "positions": positions}, ids[1:]

    class SyntheticDataLoader(ParallelAwareDataloader):
        @dataclasses.dataclass(kw_only=True, slots=True)
        class Config(ParallelAwareDataloader.Config):
            dataset: str = "synthetic"
            seed: int = 0

        def __init__(self, config: SyntheticDataLoader.Config, *, dp_world_size: int, dp_rank: int,
                     tokenizer: BaseTokenizer, seq_len: int, local_batch_size: int,
                     snapshot_every_n_steps: int | None = None, **kwargs: Any) -> None:
            ds = SyntheticTokens(tokenizer.get_vocab_size(), seq_len, config.seed + dp_rank)
            super().__init__(ds, dp_rank=dp_rank, dp_world_size=dp_world_size, num_workers=config.num_workers,
                             pin_memory=config.pin_memory, batch_size=local_batch_size,
                             snapshot_every_n_steps=snapshot_every_n_steps)

    g = globals()
    g["SyntheticTokenizer"], g["SyntheticDataLoader"] = SyntheticTokenizer, SyntheticDataLoader


def _register_flavors() -> None:
    """Add Kiln's shapes to torchtitan's llama3 flavor table, built like the stock flavors."""
    import torchtitan.models.llama3 as l3
    from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm

    def make(shape: dict[str, Any]):
        def build(attn_backend: str, tp_gemm_backend: str = "default"):
            dim, vocab = shape["dim"], shape["vocab_size"]
            return l3.Llama3Model.Config(
                dim=dim,
                vocab_size=vocab,
                enable_weight_tying=shape["tie"],
                tok_embeddings=Embedding.Config(num_embeddings=vocab, embedding_dim=dim,
                                                param_init=l3._EMBEDDING_SKIP_INIT if shape["tie"]
                                                else l3._EMBEDDING_INIT),
                norm=RMSNorm.Config(normalized_shape=dim, param_init=l3._NORM_INIT),
                lm_head=Linear.Config(in_features=dim, out_features=vocab, param_init=l3._output_linear_init(dim)),
                layers=l3._build_llama3_layers(
                    fuse_qkv=True,
                    n_layers=shape["n_layers"],
                    dim=dim,
                    n_heads=shape["n_heads"],
                    n_kv_heads=shape["n_kv_heads"],
                    hidden_dim=shape["ffn_hidden"],
                    rope=ComplexRoPE.Config(dim=dim // shape["n_heads"], max_seq_len=131072,
                                            theta=shape["rope_theta"], scaling="none"),
                    attn_backend=attn_backend,
                    tp_gemm_backend=tp_gemm_backend,
                ),
            )
        return build

    for shape in SHAPES.values():
        if shape["flavor"] not in l3.llama3_configs:
            l3.llama3_configs[shape["flavor"]] = make(shape)


def kiln_bench():
    """torchtitan config-registry function (``--module __main__ --config kiln_bench``)."""
    from torchtitan.components.checkpoint import CheckpointManager
    from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
    from torchtitan.components.metrics import MetricsProcessor
    from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw
    from torchtitan.config import CompileConfig, TrainingConfig
    from torchtitan.models.llama3 import model_registry
    from torchtitan.trainer import Trainer

    a = _ARGS
    assert a is not None
    shape = SHAPES[a.shape]
    model_spec = model_registry(shape["flavor"], attn_backend=a.attn)
    return Trainer.Config(
        loss=ChunkedLossWrapper.Config(loss_fn=CrossEntropyLoss.Config(global_vocab_size=shape["vocab_size"])),
        hf_assets_path=a.dump_folder,  # no HF assets are read: synthetic tokenizer, no checkpoint
        dump_folder=a.dump_folder,
        model_spec=model_spec,
        tokenizer=SyntheticTokenizer.Config(vocab_size=shape["vocab_size"]),  # noqa: F821 (defined at runtime)
        dataloader=SyntheticDataLoader.Config(seed=a.seed),  # noqa: F821
        optimizer=default_adamw(lr=a.lr),
        lr_scheduler=LRSchedulersContainer.Config(warmup_steps=2, decay_ratio=None),
        training=TrainingConfig(
            local_batch_size=a.batch_size,
            seq_len=a.seq_len,
            steps=a.warmup + a.steps,
            disable_cuda_graphs=not a.cuda_graphs,
            # dtype stays float32 (fp32 master weights), mixed_precision_param bfloat16: torchtitan's default
        ),
        metrics=MetricsProcessor.Config(log_freq=1),
        checkpoint=CheckpointManager.Config(enable=False),
        activation_checkpoint=None,
        compile=CompileConfig(enable=a.compile),
    )


# ----------------------------------------------------------------------------- measurement hooks

def _install_hooks() -> None:
    import torch
    from torchtitan.components import metrics as tt_metrics
    from torchtitan.trainer import Trainer

    cuda = torch.cuda.is_available() and _ARGS.device != "cpu"

    orig_step = Trainer.train_step

    def timed_train_step(self, data_iterator):
        _STATE["trainer"] = self
        if _STATE["t0"] is None:
            if cuda:
                torch.cuda.synchronize()
            _STATE["t0"] = time.perf_counter()
        out = orig_step(self, data_iterator)
        if cuda:
            torch.cuda.synchronize()
        _STATE["step_ends"].append(time.perf_counter())
        return out

    Trainer.train_step = timed_train_step

    class Capture(tt_metrics.BaseLogger):
        """Tees torchtitan's per-step metrics dict; reads the allocator peak before torchtitan resets it."""

        def __init__(self, inner: tt_metrics.BaseLogger) -> None:
            self.inner = inner

        def log(self, metrics: dict[str, Any], step: int) -> None:
            rec = {"step": step, **{k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}}
            if cuda:
                peak = torch.cuda.memory_stats().get("allocated_bytes.all.peak", 0)
                rec["allocated_peak_bytes"] = peak
            _STATE["tt_metrics"].append(rec)
            self.inner.log(metrics, step)

        def close(self) -> None:
            self.inner.close()

    orig_init = tt_metrics.MetricsProcessor.__init__

    def init(self, *args: Any, **kwargs: Any) -> None:
        orig_init(self, *args, **kwargs)
        self.logger = Capture(self.logger)

    tt_metrics.MetricsProcessor.__init__ = init


# ----------------------------------------------------------------------------- FLOPs (Kiln's definition)

def kiln_flops_per_token(shape: dict[str, Any], seq_len: int) -> tuple[float, int, str]:
    """(flops_per_token, n_matmul_params, source) with Kiln's formula; Kiln's own code when importable."""
    dim, L, H = shape["dim"], shape["n_layers"], shape["n_heads"]
    kv, hidden, vocab = shape["n_kv_heads"], shape["ffn_hidden"], shape["vocab_size"]
    hd = dim // H
    per_layer = dim * H * hd + 2 * dim * kv * hd + H * hd * dim + 3 * dim * hidden
    n_matmul = L * per_layer + vocab * dim
    flops = float(6 * n_matmul + 12 * L * H * hd * seq_len)
    source = "formula in torchtitan_runner.py"
    repo = Path(__file__).resolve().parents[2]
    if (repo / "model" / "flops.py").is_file():
        sys.path.insert(0, str(repo))
        try:
            from model.config import ModelConfig
            from model.flops import flops_per_token
        except Exception:  # Kiln not importable here: the formula above is the same
            ModelConfig = None
        finally:
            sys.path.remove(str(repo))
        if ModelConfig is not None:
            cfg = ModelConfig(vocab_size=vocab, dim=dim, n_layers=L, n_heads=H, n_kv_heads=kv, ffn_hidden=hidden,
                              max_seq_len=max(seq_len, 1), tie_embeddings=shape["tie"])
            kiln = flops_per_token(cfg, seq_len)
            if abs(kiln - flops) > 1e-6 * flops:
                raise AssertionError(f"Kiln flops {kiln} != runner formula {flops}")
            flops, source = kiln, "kiln model.flops.flops_per_token"
    return flops, n_matmul, source


# ----------------------------------------------------------------------------- main

def _prepare(args: argparse.Namespace) -> None:
    global _ARGS
    _ARGS = args
    if args.dump_folder is None:
        import tempfile

        args.dump_folder = tempfile.mkdtemp(prefix="tt_runner_")
    Path(args.dump_folder).mkdir(parents=True, exist_ok=True)
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cpu":
        _force_cpu_device()
        args.cuda_graphs = False
    _stub_datasets_if_missing()
    _torch_compat_shims()
    import torchtitan.models.llama3  # noqa: F401  (after the shims)

    _define_components()
    _register_flavors()
    if args.device == "cpu":
        _sdpa_attention_stand_in("cpu dry run: no CPU backward for FlexAttention")
        _cpu_timeouts_stand_in()
    elif args.sdpa_attention:
        _sdpa_attention_stand_in("--sdpa-attention")


def meta_only(args: argparse.Namespace) -> dict[str, Any]:
    """Build the configured model on the meta device via torchtitan's registry; no process group."""
    import torch
    from torchtitan.config import TORCH_DTYPE_MAP
    from torchtitan.tools import utils

    cfg = kiln_bench()
    mc = cfg.model_spec.model
    mc.update_from_config(config=cfg)
    with torch.device("meta"), utils.set_default_dtype(TORCH_DTYPE_MAP[cfg.training.dtype]):
        model = mc.build()
    n_params, tt_flops = mc.get_nparams_and_flops(model, cfg.training.seq_len)
    shape = SHAPES[args.shape]
    flops, n_matmul, src = kiln_flops_per_token(shape, args.seq_len)
    return {"shape": args.shape, "flavor": cfg.model_spec.flavor, "params": n_params,
            "n_matmul_params": n_matmul, "flops_per_token": flops, "flops_source": src,
            "flops_per_token_torchtitan": tt_flops,
            "modules": sorted({type(m).__name__ for m in model.modules()})}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _prepare(args)
    if args.meta_only:
        print(json.dumps(meta_only(args), indent=2))
        return 0

    import torch
    import torchtitan
    import torchtitan.train

    _single_process_env()
    _install_hooks()
    sys.argv = [sys.argv[0], "--module", "__main__", "--config", "kiln_bench", *args.tt_args]
    t_start = time.perf_counter()
    torchtitan.train.main()
    wall = time.perf_counter() - t_start

    shape = SHAPES[args.shape]
    ends, t0 = _STATE["step_ends"], _STATE["t0"]
    times = [b - a for a, b in zip([t0, *ends[:-1]], ends, strict=True)]
    timed = times[args.warmup:]
    if not timed:
        raise SystemExit(f"only {len(times)} steps ran; nothing left after --warmup {args.warmup}")
    tokens_per_step = args.batch_size * args.seq_len
    med = statistics.median(timed)
    tps = tokens_per_step / med
    flops, n_matmul, flops_src = kiln_flops_per_token(shape, args.seq_len)
    tt = [m for m in _STATE["tt_metrics"] if m["step"] > args.warmup]
    trainer = _STATE["trainer"]
    n_params = None
    if trainer is not None:
        n_params = sum(p.numel() for m in trainer.model_parts for p in m.parameters())

    def med_of(key: str) -> float | None:
        vals = [m[key] for m in tt if isinstance(m.get(key), float)]
        return statistics.median(vals) if vals else None

    peak_bytes = max((m.get("allocated_peak_bytes", 0) for m in _STATE["tt_metrics"]), default=0)
    cuda = args.device == "cuda"
    result = {
        "system": "torchtitan",
        "version": getattr(torchtitan, "__version__", "?"),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
        "shape": args.shape,
        "flavor": shape["flavor"],
        "params": n_params,
        "n_matmul_params": n_matmul,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "tokens_per_step": tokens_per_step,
        "compile": args.compile,
        "cuda_graphs": args.cuda_graphs and cuda,
        "sdpa_attention": bool(args.sdpa_attention),
        "attn": args.attn,
        "precision": "FSDP2 MixedPrecisionPolicy param=bf16 reduce=fp32 (fp32 master weights), 1-rank mesh",
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
        "peak_mem_gb": peak_bytes / 1e9 if cuda else None,
        "torchtitan_logged": {
            "tps_median": med_of("throughput(tps)"),
            "mfu_pct_median": med_of("mfu(%)"),
            "tflops_median": med_of("tflops"),
            "max_reserved_gib_max": max((m.get("memory/max_reserved(GiB)", 0.0) for m in tt), default=None),
            "max_active_gib_max": max((m.get("memory/max_active(GiB)", 0.0) for m in tt), default=None),
            "loss_first": _STATE["tt_metrics"][0].get("loss_metrics/global_avg_loss") if _STATE["tt_metrics"] else None,
            "loss_last": _STATE["tt_metrics"][-1].get("loss_metrics/global_avg_loss") if _STATE["tt_metrics"] else None,
            "num_flops_per_token": (trainer.metrics_processor.num_flops_per_token if trainer is not None else None),
            "gpu_peak_flops": (trainer.metrics_processor.gpu_peak_flops if trainer is not None else None),
        },
        "wall_s": wall,
        "compat_shims": _SHIMS,
        "argv": sys.argv[1:],
    }
    if not all(math.isfinite(t) for t in timed):
        raise SystemExit("non-finite step time")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"torchtitan {result['version']} {args.shape} bs={args.batch_size} T={args.seq_len} "
          f"compile={args.compile} graphs={result['cuda_graphs']}: {tps:,.0f} tok/s, "
          f"MFU {100 * result['mfu']:.1f}%, peak {result['peak_mem_gb']} GB -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
