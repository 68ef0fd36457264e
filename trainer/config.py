"""`TrainConfig`: every setting of a pretraining run, as nested dataclasses loaded by `kiln.config`.

    cfg = load_config(TrainConfig, "configs/train/debug.toml", ["optim.lr=1e-3", "run.steps=50"])

Sections mirror the parts of the trainer: `model` (which network), `data` (which
tokens, how many per step), `optim` and `schedule` (how weights move), `checkpoint`
(what is kept on disk) and `run` (where, how long, on what hardware). Each field has
a docstring; `__post_init__` rejects bad values with a message naming the key.

Fields marked `runtime_field` change how fast a run goes, never what it learns, so
the Prefect pretrain stage leaves them out of its artifact key.

Batch semantics (read this once): one optimizer step consumes
``micro_batch_size * grad_accum_steps`` sequences of ``seq_len`` tokens **in total
over all ranks**. Each of the ``world_size`` ranks runs ``grad_accum_steps /
world_size`` micro-steps, so the same config learns the same thing (same data
order, same global batch) on 1, 2 or 8 devices, and a run may resume on a different
number of devices.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass, field
from typing import Any, Literal

from kiln.config import runtime_field, to_dict
from kiln.errors import KilnError
from model import ModelConfig, get_preset

HOST_PATH = {"host_path": True}
"""Field metadata marking a path on this machine (data, base model, run directory): where a run
reads and writes, never what it learns. Checkpoints keep such fields out of their content
(`split_host_paths`) so that the same run in another directory writes the same bytes."""


def host_path_field() -> Any:
    """A path field (default empty) marked `HOST_PATH`."""
    return field(default="", metadata=HOST_PATH)


def split_host_paths(cfg: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """`cfg` (a nested config dataclass) as plain data without its `HOST_PATH` fields, and those
    fields by dotted name (``{"run.out_dir": "/runs/x", ...}``)."""
    content, paths = to_dict(cfg), {}

    def walk(obj: Any, node: dict[str, Any], prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("host_path"):
                paths[prefix + f.name] = node.pop(f.name)
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                walk(value, node[f.name], f"{prefix}{f.name}.")

    walk(cfg, content, "")
    return content, paths


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise KilnError(f"train config: {key} {message}")


@dataclass(frozen=True)
class ModelSection:
    preset: str = "debug"
    """Name of a `model.PRESETS` shape (debug, tiny, 125m, 1b, 7b, llama3-8b, llama3.1-8b)."""
    overrides: dict[str, int | float | str | bool | None] = field(default_factory=dict)
    """ModelConfig fields replacing the preset's, e.g. ``{max_seq_len = 512}``. The pretrain
    stage sets ``vocab_size`` from the tokenizer (its size padded to a multiple of 64)."""

    def __post_init__(self) -> None:
        self.resolve()  # an unknown preset or a bad override fails when the config is read

    def resolve(self) -> ModelConfig:
        """The ModelConfig this section describes."""
        return get_preset(self.preset, **self.overrides)


@dataclass(frozen=True)
class DataSection:
    train_dir: str = host_path_field()
    """Split directory of token shards (``<tokens artifact>/train``); required to train."""
    val_dir: str = host_path_field()
    """Validation split directory; empty means no validation."""
    seq_len: int = 128
    """Tokens per training sequence; at most the model's max_seq_len."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass on one rank."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step summed over ALL ranks (a multiple of the world size):
    global batch = micro_batch_size * grad_accum_steps sequences, whatever the device count."""
    num_workers: int = runtime_field(0)
    """Background threads prefetching batches from the memory-mapped shards. 0 reads in the
    training thread (a memmap gather costs microseconds); threads share the memmaps, so
    memory does not grow with them."""
    source_weights: dict[str, float] = field(default_factory=dict)
    """Mixing weights per source (``{zhwiki = 0.5, wudao = 0.3, pile = 0.2}``; normalized to sum
    1). Empty: every training sequence is drawn uniformly, so sources keep their natural
    proportions. Otherwise each training sample's source is drawn with these weights (seeded, so
    the stream is reproducible and resumable); every source of the train split must be listed
    (0 leaves one out), and its shards must each hold a single source. A source drawn more often
    than it has sequences wraps to a fresh shuffle of itself: upsampling repeats its data."""

    def __post_init__(self) -> None:
        for name in ("seq_len", "micro_batch_size", "grad_accum_steps"):
            _check(getattr(self, name) > 0, f"data.{name}", f"must be > 0, got {getattr(self, name)}")
        _check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        for source, weight in self.source_weights.items():
            _check(0 <= weight < float("inf"), f"data.source_weights.{source}",
                   f"must be a finite number >= 0, got {weight}")
        if self.source_weights:
            _check(sum(self.source_weights.values()) > 0, "data.source_weights",
                   f"must have a positive sum, got {self.source_weights}")


@dataclass(frozen=True)
class OptimSection:
    lr: float = 3e-4
    """Peak learning rate, reached at the end of warmup."""
    min_lr: float = 3e-5
    """Floor of the cosine/WSD decay (nanoGPT/Chinchilla habit: lr / 10)."""
    weight_decay: float = 0.1
    """Decoupled AdamW decay, applied to 2-D weights only (matmuls and embeddings; see optim.py)."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.95
    """AdamW second-moment decay (0.95 rather than 0.999: steadier at LLM batch sizes, as in Llama/GPT-3)."""
    eps: float = 1e-8
    """AdamW denominator epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping (the norm is still logged)."""
    fused: bool | None = runtime_field(None)
    """Fused AdamW kernel; None means on when the parameters are on CUDA."""
    bf16_update: Literal["stochastic", "kahan"] = "stochastic"
    """With run.param_dtype = "bfloat16": how each new weight becomes bf16 (`trainer.optim`).
    stochastic: rounded up or down at random, unbiased (12 bytes a parameter with AdamW); kahan:
    rounded to nearest with the dropped part kept in a bf16 buffer and added to the next update
    (14 bytes a parameter; no rounding noise, and a slower optimizer step). Measured on the 1B
    shape over 1000 steps against fp32 weights: stochastic +1.4 % final loss, kahan +0.5 % (within
    the spread of repeated fp32-weight runs; README's GPU frontier). Part of what is learned;
    ignored with fp32 weights."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(0 <= self.min_lr <= self.lr, "optim.min_lr", f"must be in [0, optim.lr], got {self.min_lr}")
        _check(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            _check(0 <= getattr(self, name) < 1, f"optim.{name}", f"must be in [0, 1), got {getattr(self, name)}")
        _check(self.eps > 0, "optim.eps", f"must be > 0, got {self.eps}")
        _check(self.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")


@dataclass(frozen=True)
class ScheduleSection:
    kind: Literal["cosine", "wsd", "constant"] = "cosine"
    """cosine: warmup then cosine to min_lr at the last step; wsd: warmup, flat at lr, then a
    linear decay to min_lr over the last `decay_steps_fraction` of the run; constant: warmup then lr."""
    warmup_steps: int = 100
    """Steps of linear warmup from ~0 to lr."""
    decay_steps_fraction: float = 0.2
    """WSD only: share of all steps spent in the final decay (MiniCPM and OLMo use 0.1-0.2)."""

    def __post_init__(self) -> None:
        _check(self.warmup_steps >= 0, "schedule.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(0 < self.decay_steps_fraction <= 1, "schedule.decay_steps_fraction",
               f"must be in (0, 1], got {self.decay_steps_fraction}")


@dataclass(frozen=True)
class CheckpointSection:
    every_steps: int = runtime_field(1000)
    """Save a checkpoint every this many steps (and always after the last step); 0 = only at the end."""
    keep_last: int = runtime_field(2)
    """Keep this many newest checkpoints (at least 1: resume needs one)."""
    keep_best: bool = runtime_field(True)
    """Also keep the checkpoint with the lowest validation loss (needs val at checkpoint steps)."""
    async_save: bool = runtime_field(True)
    """Write checkpoints in a background thread: the loop waits only for a copy of the state into host
    memory (and for the previous save, if that is still writing). Runtime-only: the bytes on disk, and
    so every resume, are the same either way; only when the loop may go on differs."""
    export_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the consolidated weights in ``final/`` (bfloat16 halves the size)."""

    def __post_init__(self) -> None:
        _check(self.every_steps >= 0, "checkpoint.every_steps", f"must be >= 0, got {self.every_steps}")
        _check(self.keep_last >= 1, "checkpoint.keep_last", f"must be >= 1, got {self.keep_last}")


@dataclass(frozen=True)
class RunSection:
    out_dir: str = host_path_field()
    """Run directory: checkpoints/, metrics.jsonl, loss.png, final/, DONE.json. Reusing it resumes."""
    steps: int = 1000
    """Optimizer steps in the whole run (the schedule's length)."""
    seed: int = 1337
    """Seeds weight init and the data order (each epoch reshuffles from (seed, epoch))."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = cuda when available, else cpu."""
    dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"
    """Compute dtype on CUDA (autocast, or FSDP's param dtype; master weights stay fp32).
    CPU always computes in float32: CPU autocast is slow and fp32 keeps resume bitwise exact."""
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype the weights (and so their gradients) are kept and updated in. float32: fp32 master weights,
    16 bytes per parameter with AdamW. bfloat16: bf16 weights and gradients with fp32 AdamW moments
    and stochastically rounded updates (`trainer.optim.StochasticRoundingAdamW`), 12 bytes per
    parameter -- an 8B model's training state is 96 GB instead of 128, leaving room on one 141 GB GPU
    for activations instead of recomputing them. Not a runtime field: the weights learned differ."""
    precision: Literal["bf16", "fp8-tensorwise", "fp8-rowwise"] = "bf16"
    """Matmul precision of the transformer blocks' linears. bf16: every matmul in `run.dtype`.
    fp8-*: torchao float8 training (`trainer.float8`) for the block linears that gain from it,
    with tensorwise (one scale per tensor, fastest) or rowwise (one per row, power-of-2 scales,
    more accurate) scaling; the output head, embeddings and norms stay in run.dtype. Needs a
    CUDA GPU with FP8 tensor cores (sm_89+: H100/H200/L40/RTX 4090), ``pip install
    torchao==0.18.0``, run.dtype = bfloat16, and run.compile for speed (compile fuses the casts).
    Not a runtime field: FP8 rounds activations, weights and gradients to 3 mantissa bits inside
    those matmuls, so the weights a run learns differ (slightly) from a bf16 run's; the artifact
    key must tell them apart."""
    fp8_filter: Literal["auto", "all"] = "auto"
    """Which block linears an fp8-* run converts (the head never is; dims must be multiples of 16).
    auto: only those large enough to gain, by torchao's H100 thresholds per recipe (torchtitan's
    ``auto_filter_small_kn``); all: every one. Part of what is learned, like `precision`."""
    fp8_head: bool = False
    """With an fp8-* precision and run.fused_loss: the output head's three matmuls in FP8 too
    (tensorwise; `model.fused_loss`), its largest bf16 GEMMs left at a 128k vocabulary. torchtitan
    and torchao keep the head in bf16 by default; this is the measured opt-in (README's GPU frontier
    gives its speed and its 1000-step loss). Validation still computes the head's loss exactly, and
    DPO, which scores whole sequences from full logits, does not use the fused loss at all.
    Part of what is learned, like `precision`."""
    fused_loss: bool = runtime_field(False)
    """Compute the output head and cross-entropy in chunks of tokens with their gradients
    (`model.fused_loss`), so the [tokens, vocab] logits are never materialized: at a 128k vocab
    that saves ~10 bytes per token per vocab entry (GBs), and allows a larger micro-batch.
    Runtime-only: the same loss and gradients up to float summation order, like compile."""
    fused_loss_chunk: int = runtime_field(0)
    """Tokens per chunk of the fused loss; 0 = ~1 GiB of fp32 logits per chunk (2048 at 128k vocab)."""
    compile: bool = runtime_field(False)
    """torch.compile each transformer block (CUDA: ~1.2-1.5x faster after a minute of compiling)."""
    compile_mode: Literal["default", "tune-kernels", "max-autotune-no-cudagraphs"] = runtime_field("default")
    """torch.compile's mode with run.compile. tune-kernels: Inductor's coordinate-descent tuning of the
    Triton kernels it generates (norms, RoPE, SwiGLU, the fused loss's softmax pass: block sizes and
    warps benchmarked on the device), matmuls left to cuBLAS; tens of seconds more compile.
    max-autotune-no-cudagraphs does that and also benchmarks Triton GEMM templates against cuBLAS
    for each matmul shape: minutes more compile the first time (cached afterwards), and on an H200
    with torch 2.11 cuBLAS won every GEMM it tried at 1B and 125M (README's GPU frontier). No CUDA
    graphs: FSDP's hooks and the loader's host copies do not capture."""
    sdpa_backend: Literal["auto", "flash"] = runtime_field("auto")
    """Attention kernel on CUDA. auto: PyTorch's choice (cuDNN's flash attention on Hopper with torch
    2.11); flash: PyTorch's own FlashAttention-2 kernels (cuDNN attention switched off for the process),
    for head sizes where they are faster -- measured in the README's GPU frontier (slower on an H200 at
    head_dim 64). FlashAttention-2 takes no explicit mask, so with flash, attention that has one
    (documents packed with their own masks) runs in another of PyTorch's kernels."""
    parallel: Literal["auto", "none", "ddp", "fsdp"] = runtime_field("auto")
    """Data parallelism across torchrun ranks; auto = fsdp on CUDA, ddp on CPU, none for 1 rank.
    fsdp also works in one process (a 1-rank group): bf16 params once per step instead of autocast,
    faster with fp32 weights; with run.param_dtype = bfloat16 there is nothing to cast and none is
    faster (8B on one H200: 11,468 against 10,320 tok/s; README's GPU frontier)."""
    activation_checkpointing: bool = runtime_field(False)
    """Recompute each block's activations in backward: ~1/3 more compute, far less memory."""
    ac_every: int = runtime_field(1)
    """With activation_checkpointing: recompute only every this many-th block (1 = all; 2 = every
    second, half the recompute for half the memory saved; torchtitan's selective per-layer mode).
    Pick the largest value whose activations still fit."""
    log_every: int = runtime_field(10)
    """Steps between metrics lines (each costs a device sync)."""
    val_every: int = 500
    """Steps between validation passes (and after the last step); 0 = only at the end."""
    val_batches: int = 20
    """Micro-batches per rank in one validation pass (always the same first ones of the val split)."""
    peak_tflops: float = runtime_field(989.0)
    """Per-device peak for MFU: 989 = H100 SXM dense bf16 spec (1979 is the sparse figure)."""
    wandb: bool = runtime_field(False)
    """Also log metrics to Weights & Biases (needs `pip install wandb`)."""
    tensorboard: bool = runtime_field(False)
    """Also write TensorBoard events to <out_dir>/tb (needs `pip install tensorboard`)."""

    def __post_init__(self) -> None:
        for name in ("steps", "log_every"):
            _check(getattr(self, name) > 0, f"run.{name}", f"must be > 0, got {getattr(self, name)}")
        for name in ("val_every", "val_batches"):
            _check(getattr(self, name) >= 0, f"run.{name}", f"must be >= 0, got {getattr(self, name)}")
        _check(self.peak_tflops > 0, "run.peak_tflops", f"must be > 0, got {self.peak_tflops}")
        _check(self.ac_every >= 1, "run.ac_every", f"must be >= 1, got {self.ac_every}")
        _check(self.fused_loss_chunk >= 0, "run.fused_loss_chunk",
               f"must be >= 0 (0 = auto), got {self.fused_loss_chunk}")
        _check(not self.fp8_head or (self.precision != "bf16" and self.fused_loss), "run.fp8_head",
               f"needs an fp8-* run.precision and run.fused_loss=true (the FP8 head lives in the fused loss), "
               f"got run.precision = {self.precision!r}, run.fused_loss = {self.fused_loss}")
        _check(self.precision == "bf16" or self.dtype == "bfloat16", "run.precision",
               f"= {self.precision!r} needs run.dtype = 'bfloat16' (FP8 matmuls take and give bf16), "
               f"got run.dtype = {self.dtype!r}")


RDZV_PORT = 29400
"""torchrun's default c10d rendezvous port, used when `LaunchSection.rdzv_endpoint` names only a host."""
TEMPLATE_FIELDS = ("python", "torchrun_args", "module", "config", "nnodes", "nproc_per_node", "rdzv_endpoint",
                   "rdzv_id")
"""Placeholders of `LaunchSection.command_template` (``tasks.launch.launch_command`` fills them)."""


@dataclass(frozen=True)
class LaunchSection:
    """How a pipeline stage starts its trainer (``[pretrain.launch]``, ``[sft.launch]``, ``[dpo.launch]``).

    Lives here, below both `tasks` and the trainers, so every training stage config
    shares one shape; the trainers themselves never read it. Every field but
    `keep_checkpoints` is runtime-only: the global batch is fixed by the data section
    whatever the number of processes or nodes (see the module doc), so how the trainer
    is spread over the hardware never enters the artifact key.

    Several nodes use torchrun's c10d rendezvous (an elastic agent per node, the
    rendezvous store hosted by the agent on the endpoint's host); `tasks.launch` says
    how each launcher starts them. The run directory must be on a filesystem every
    node mounts at the same path: all ranks write their checkpoint shards into it.
    """

    nproc_per_node: int = runtime_field(1)
    """Trainer processes per node (one per GPU)."""
    nnodes: int | str = runtime_field(1)
    """Nodes (hosts) in the job: a count, or ``"MIN:MAX"`` for an elastic job that starts once MIN nodes
    have joined (and up to MAX may). An elastic job needs data.grad_accum_steps to be a multiple of every
    world size it can reach (the trainer checks the one it gets)."""
    launcher: Literal["auto", "python", "torchrun", "srun", "template"] = runtime_field("auto")
    """auto = plain ``python -m trainer.<recipe>`` for one process (saves torchrun's ~6 s start), torchrun
    otherwise; torchrun = this node's agent (other nodes run ``python -m tasks.launch --join <run dir>``);
    srun = ``srun`` starts one torchrun agent on each of `nnodes` nodes of the Slurm allocation the stage
    runs in; template = `command_template`, for any other scheduler."""
    rdzv_endpoint: str = runtime_field("")
    """``host[:port]`` of the c10d rendezvous (port 29400 if left out): a host every node reaches, where
    one of the agents runs (in practice the node running the stage). Required for more than one node,
    except with srun, which takes the first host of the Slurm allocation."""
    rdzv_id: str = runtime_field("")
    """Rendezvous id shared by the nodes of one run. Empty: derived from the run directory (the stage and
    its artifact key), which every node of the run sees and no other run has, so a node started for
    another run never joins this one, and a rerun that resumes the run uses the same id."""
    command_template: str = runtime_field("")
    """launcher = template only: the command, with placeholders {python} {torchrun_args} {module} {config}
    (and {nnodes} {nproc_per_node} {rdzv_endpoint} {rdzv_id}), e.g.
    ``"mpirun -np 2 -npernode 1 {python} -m torch.distributed.run {torchrun_args} -m {module} --config {config}"``.
    Split into words like a shell would, but no shell runs it: {torchrun_args} becomes torchrun's options
    (`tasks.launch.torchrun_args`), every other value one word, spaces and all."""
    keep_checkpoints: int = 1
    """Newest checkpoints kept in the finished artifact (for continued training); 0 keeps none."""

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1:
            raise KilnError(f"launch.nproc_per_node must be >= 1, got {self.nproc_per_node}")
        low, high = self.node_range  # checks the form
        if self.launcher == "python" and (self.nproc_per_node > 1 or high > 1):
            what = (f"launch.nproc_per_node = {self.nproc_per_node}" if self.nproc_per_node > 1
                    else f"launch.nnodes = {self.nnodes!r}")
            raise KilnError(f"launch.launcher = 'python' starts one process; use 'torchrun' (or 'auto') for {what}")
        if high > 1 and not self.rdzv_endpoint and self.launcher != "srun":
            raise KilnError(f"launch.nnodes = {self.nnodes!r} needs launch.rdzv_endpoint = \"host:port\" (a host "
                            "every node reaches, e.g. the one running the stage), unless launch.launcher = 'srun'")
        if self.rdzv_endpoint:
            _check_endpoint(self.rdzv_endpoint)
        if self.rdzv_id and (any(c.isspace() for c in self.rdzv_id) or "/" in self.rdzv_id):
            raise KilnError(f"launch.rdzv_id must not contain spaces or '/', got {self.rdzv_id!r}")
        if self.launcher == "template" and not self.command_template:
            raise KilnError("launch.launcher = 'template' needs launch.command_template, e.g. \"mpirun -np 2 "
                            "{python} -m torch.distributed.run {torchrun_args} -m {module} --config {config}\"")
        if self.command_template and self.launcher != "template":
            raise KilnError(f"launch.command_template is used only with launch.launcher = 'template', got "
                            f"{self.launcher!r}; remove one of them")
        if self.command_template:
            _check_template(self.command_template)
        if self.keep_checkpoints < 0:
            raise KilnError(f"launch.keep_checkpoints must be >= 0, got {self.keep_checkpoints}")

    @property
    def node_range(self) -> tuple[int, int]:
        """(min, max) nodes: ``(n, n)`` for a count."""
        text = str(self.nnodes)
        parts = text.split(":")
        if len(parts) in (1, 2) and all(p.strip().isdigit() for p in parts):
            low, high = int(parts[0]), int(parts[-1])
            if 1 <= low <= high:
                return low, high
        raise KilnError(f"launch.nnodes must be a count >= 1 or \"MIN:MAX\" with 1 <= MIN <= MAX, got {self.nnodes!r}")

    @property
    def multi_node(self) -> bool:
        return self.node_range[1] > 1

    @property
    def resolved_launcher(self) -> Literal["python", "torchrun", "srun", "template"]:
        """`launcher` with auto decided: python for one process on one node, else torchrun."""
        if self.launcher != "auto":
            return self.launcher
        return "torchrun" if self.nproc_per_node > 1 or self.multi_node else "python"

    @property
    def use_torchrun(self) -> bool:
        """Whether the trainer runs under torchrun (directly, under srun or in a template)."""
        return self.resolved_launcher != "python"


def _check_endpoint(endpoint: str) -> None:
    host, sep, port = endpoint.rpartition(":") if ":" in endpoint else (endpoint, "", "")
    if not host or any(c.isspace() for c in host) or sep and not (port.isdigit() and 0 < int(port) < 65536):
        raise KilnError(f"launch.rdzv_endpoint must be \"host:port\" (or \"host\" for port {RDZV_PORT}), "
                        f"got {endpoint!r}")


def _check_template(template: str) -> None:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise KilnError(f"launch.command_template: {exc} in {template!r} (write a literal brace as {{{{ or }}}})"
                        ) from None
    unknown = sorted(names - set(TEMPLATE_FIELDS))
    if unknown:
        raise KilnError(f"launch.command_template: unknown placeholder {{{unknown[0]}}}; use "
                        + " ".join(f"{{{n}}}" for n in TEMPLATE_FIELDS))
    missing = [n for n in ("module", "config") if n not in names]
    if missing:
        raise KilnError(f"launch.command_template must contain {{{missing[0]}}}: the trainer runs the stage's "
                        f"module on the stage's config (… -m {{module}} --config {{config}})")


@dataclass(frozen=True)
class TrainConfig:
    """A whole pretraining run: `python -m trainer.pretrain --config cfg.toml key=value ...`."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        max_len = self.model.resolve().max_seq_len
        _check(self.data.seq_len <= max_len, "data.seq_len",
               f"({self.data.seq_len}) exceeds the model's max_seq_len ({max_len}); "
               f"raise model.overrides.max_seq_len or lower data.seq_len")
        _check(self.schedule.warmup_steps < self.run.steps or self.schedule.warmup_steps == 0,
               "schedule.warmup_steps", f"({self.schedule.warmup_steps}) must be < run.steps ({self.run.steps})")

    def model_config(self) -> ModelConfig:
        return self.model.resolve()

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one optimizer step over all ranks."""
        return self.data.seq_len * self.data.micro_batch_size * self.data.grad_accum_steps

    def with_vocab_size(self, vocab_size: int) -> TrainConfig:
        """A copy whose model uses `vocab_size` (the pretrain stage sets it from the tokenizer)."""
        model = dataclasses.replace(self.model, overrides={**self.model.overrides, "vocab_size": vocab_size})
        return dataclasses.replace(self, model=model)
