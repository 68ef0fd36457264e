"""How a model runs on the hardware: process group, device, precision, checkpointing, compile, DDP/FSDP2.

The model (`model.Llama`) knows nothing of any of this (torchtitan's split):

    dist = init_distributed(cfg.run)                  # reads torchrun's env; 1 process needs none
    model, raw = build_model(model_cfg, cfg.run, dist)  # meta build -> parallelize -> init
    with autocast_context(dist, cfg.run): loss = model(x, y)[1]

`parallelize` applies, in torchtitan's order, the weights' dtype (run.param_dtype), FP8 conversion of the block linears
(`trainer.float8`, when run.precision asks) -> activation checkpointing per block ->
`torch.compile` per block -> FSDP2 `fully_shard` per block and at the root (params in
bf16 for compute, gradients reduced in fp32). DDP instead wraps a materialized model.
It also switches the head to the fused chunked loss (run.fused_loss, `model.fused_loss`).
Mixed precision: FSDP casts parameters itself; single device and DDP use autocast on
CUDA; CPU always computes in fp32.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as tdist
from torch import nn

from kiln.errors import KilnError
from model import Llama, ModelConfig
from model.fused_loss import default_chunk_size
from trainer import float8
from trainer.config import RunSection

log = logging.getLogger("trainer")

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


@dataclass
class DistEnv:
    """This process's place in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    mode: Literal["none", "ddp", "fsdp"]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def initialized(self) -> bool:
        return tdist.is_available() and tdist.is_initialized()

    def barrier(self) -> None:
        if self.initialized:
            tdist.barrier()


def resolve_device(run: RunSection) -> torch.device:
    if run.device == "cuda" and not torch.cuda.is_available():
        raise KilnError("train config: run.device='cuda' but CUDA is not available here; "
                        "use run.device='auto' or 'cpu'")
    if run.device == "cpu" or (run.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(run: RunSection) -> DistEnv:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) and pick the parallel mode.

    One process with ``parallel = "fsdp"`` still gets a 1-rank group and FSDP: its
    MixedPrecisionPolicy casts parameters to bf16 once per step instead of autocast
    casting at every matmul (torchtitan's single-GPU recipe).
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(run)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    mode: Literal["none", "ddp", "fsdp"] = "none"
    if world_size > 1:
        if run.parallel == "none":
            raise KilnError(f"train config: run.parallel='none' with {world_size} processes would train "
                            f"{world_size} unrelated copies; use auto, ddp or fsdp")
        mode = run.parallel if run.parallel != "auto" else ("fsdp" if device.type == "cuda" else "ddp")
    elif run.parallel == "fsdp":
        mode = "fsdp"
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                           ("MASTER_PORT", str(_free_port()))):
            os.environ.setdefault(key, value)  # what torchrun --nproc-per-node 1 would set
    elif run.parallel == "ddp":
        log.info("run.parallel=ddp ignored: a single process needs no data parallelism")
    if mode != "none" and not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        tdist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    if mode == "fsdp" and run.dtype == "float16":
        raise KilnError("train config: run.dtype='float16' is not supported with FSDP; use bfloat16")
    return DistEnv(rank, local_rank, world_size, device, mode)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def compute_dtype(dist: DistEnv, run: RunSection) -> torch.dtype:
    """The dtype matmuls run in: run.dtype on CUDA, always fp32 on CPU."""
    return DTYPES[run.dtype] if dist.device.type == "cuda" else torch.float32


def autocast_context(dist: DistEnv, run: RunSection) -> contextlib.AbstractContextManager:
    """Autocast for single-device/DDP CUDA runs; FSDP casts params itself and CPU stays fp32."""
    dtype = compute_dtype(dist, run)
    if dist.mode == "fsdp" or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dist.device.type, dtype=dtype)


def uses_fsdp_float8_all_gather(run: RunSection, dist: DistEnv) -> bool:
    """Tensorwise FP8 under FSDP over several ranks all-gathers float8 weight shards (half the bytes)."""
    return run.precision == "fp8-tensorwise" and dist.mode == "fsdp" and dist.world_size > 1


def apply_loss_and_precision(model: Llama, run: RunSection, dist: DistEnv) -> None:
    """The fused head + loss (run.fused_loss) and FP8 block linears (run.precision), before anything wraps them."""
    if run.fused_loss:
        if not isinstance(model.output, nn.Linear):
            raise KilnError("train config: run.fused_loss needs a plain output head; drop 'output' from "
                            "lora.targets or set run.fused_loss=false")
        model.fused_loss_chunk = run.fused_loss_chunk or default_chunk_size(model.cfg.vocab_size)
        model.fused_loss_fp8 = run.fp8_head
    if run.precision != "bf16":
        float8.check_fp8_device(dist.device)
        if not run.compile:
            log.warning("run.precision=%s without run.compile: FP8 casts run unfused, usually slower than bf16",
                        run.precision)
        float8.convert_to_float8(model, run.precision, fp8_filter=run.fp8_filter,
                                 fsdp_all_gather=uses_fsdp_float8_all_gather(run, dist))


def register_step_hooks(model: nn.Module, optimizer: torch.optim.Optimizer, run: RunSection,
                        dist: DistEnv) -> None:
    """What must follow every optimizer step: FSDP float8 all-gather wants all weight scales in one
    all-reduce after the weights change (torchao's `precompute_float8_dynamic_scale_for_fsdp`)."""
    if uses_fsdp_float8_all_gather(run, dist):
        optimizer.register_step_post_hook(lambda *_: float8.precompute_fsdp_scales(model))


def apply_activation_checkpointing(model: Llama, every: int = 1) -> None:
    """Wrap every `every`-th block (from the first) so its activations are recomputed in backward
    (state-dict keys unchanged); the others keep theirs."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(model.layers):
        if i % every == 0:
            # preserve_rng_state=False: the blocks use no randomness, and saving RNG state costs a sync.
            model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def select_attention_backend(run: RunSection) -> None:
    """run.sdpa_backend: flash switches cuDNN attention off for this process, so SDPA picks FlashAttention-2
    (before compile: the kernel is chosen when a graph is traced)."""
    torch.backends.cuda.enable_cudnn_sdp(run.sdpa_backend == "auto")


def apply_param_dtype(model: nn.Module, run: RunSection) -> None:
    """Cast the weights to run.param_dtype (bf16 weights: `trainer.optim.StochasticRoundingAdamW`).

    Parameters only: the RoPE tables stay fp32 whether this runs before or after `init_weights`."""
    if run.param_dtype == "float32":
        return
    dtype = DTYPES[run.param_dtype]
    with torch.no_grad():
        for param in model.parameters():  # a tied head is one Parameter with the embedding: cast once
            param.data = param.data.to(dtype)


COMPILE_OPTIONS: dict[str, dict[str, bool]] = {"tune-kernels": {"coordinate_descent_tuning": True}}
"""`run.compile_mode` values that are Inductor options rather than a torch.compile mode. tune-kernels is
the half of max-autotune that does not touch GEMMs: coordinate-descent search over each generated Triton
kernel's block sizes and warps (cuBLAS keeps every matmul)."""


def compile_kwargs(mode: str) -> dict[str, Any]:
    """torch.compile's keyword for `run.compile_mode` (it takes a mode or options, not both)."""
    return {"options": dict(COMPILE_OPTIONS[mode])} if mode in COMPILE_OPTIONS else {"mode": mode}


def apply_compile(model: Llama, mode: str = "default") -> None:
    """Compile each block in place: blocks are identical, so one graph is reused and compile is fast."""
    kwargs = compile_kwargs(mode)
    for block in model.layers:
        block.compile(fullgraph=True, **kwargs)
    # The head (norm + output + cross-entropy) is compiled too: eager, the float32 upcast and the
    # log-softmax each make a full pass over the [B, T, vocab] logits.
    model.head = torch.compile(model.head, **kwargs)  # type: ignore[method-assign]


def fsdp_reduce_dtype(dist: DistEnv) -> torch.dtype | None:
    """fp32 gradient reduce-scatter over several ranks (a sum of bf16 gradients loses bits); on one rank
    None, i.e. in the compute dtype: there is nothing to sum, so the result is bit for bit the same
    (bf16 -> fp32 -> bf16 is exact, and the reduced gradient lands in the weights' own dtype either
    way), without an fp32 copy of every block's gradients (0.87 GB a block at 8B). That holds because
    every micro-batch's backward reduces (`trainer.loop.grad_sync_context` never defers FSDP's);
    deferred, the unsharded gradients would accumulate in bf16 here and in fp32 with an fp32 reduce."""
    return torch.float32 if dist.world_size > 1 else None


def apply_fsdp(model: Llama, dist: DistEnv, run: RunSection) -> None:
    """Shard every block, then the root (embeddings, final norm, head), with bf16 compute and fp32 reduce
    (`fsdp_reduce_dtype`)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype(dist, run), reduce_dtype=fsdp_reduce_dtype(dist))
    n = len(model.layers)
    for i, block in enumerate(model.layers):
        # The last block's params are needed again at once by backward: keep them gathered.
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < n - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)


def parallelize(model: Llama, run: RunSection, dist: DistEnv) -> nn.Module:
    """Apply activation checkpointing, compile and FSDP/DDP as configured; returns the module to train.

    FSDP works on a meta-device model (materialize afterwards with `to_empty` +
    `init_weights`); DDP needs a materialized one. `build_model` does both right.
    """
    select_attention_backend(run)
    apply_param_dtype(model, run)
    apply_loss_and_precision(model, run, dist)
    if run.activation_checkpointing:
        apply_activation_checkpointing(model, run.ac_every)
    if run.compile:
        apply_compile(model, run.compile_mode)
    if dist.mode == "fsdp":
        apply_fsdp(model, dist, run)
    elif dist.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [dist.device.index] if dist.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    return model


def build_model(model_cfg: ModelConfig, run: RunSection, dist: DistEnv) -> tuple[nn.Module, Llama]:
    """Build on the meta device, parallelize, materialize on `dist.device`, init from `run.seed`.

    Returns (module to call in the loop, the underlying Llama for state dicts and exports).
    No weights are ever allocated on the CPU first, so a 7B model fits however many ranks.
    """
    torch.manual_seed(run.seed)
    with torch.device("meta"):
        raw = Llama(model_cfg)
    if dist.mode == "fsdp":
        model = parallelize(raw, run, dist)
        raw.to_empty(device=dist.device)
        with torch.no_grad():
            raw.init_weights()
        return model, raw
    raw.to_empty(device=dist.device)
    with torch.no_grad():
        raw.init_weights()
    return parallelize(raw, run, dist), raw
