"""How long a checkpoint stalls the real training loop, and how fast the whole save is, for one preset.

    python benchmarks/checkpoint_stall.py --preset 1b --micro-batch-size 4 --compile            # one H200
    python benchmarks/checkpoint_stall.py --preset llama3.1-8b --seq-len 4096 --micro-batch-size 1 \\
        --compile --set run.activation_checkpointing=true --modes async                        # 8B
    python benchmarks/checkpoint_stall.py --device cpu --preset debug --steps-after 3           # smoke (tests)

Runs `trainer.loop` itself (`PretrainRecipe`, a metrics line every step) on a synthetic
token shard: ``--save-at`` steps, one checkpoint, ``--steps-after`` more, then a stop
(`KILN_TRAIN_STOP_AFTER_STEP`, which waits for the save in flight and exits without the
final save: one checkpoint on disk, which at 8B is ~96 GB). Per mode (``--modes``:
``async`` = ``checkpoint.async_save=true``, ``sync``) one row:

- ``stall_s``: the loop's own record (``"kind": "checkpoint"`` in metrics.jsonl): how long
  the save call blocked the loop (the host copy; plus, in sync mode, the whole write).
- ``loop_stall_s``: what the save cost the loop end to end, from the step times around it
  (each step's metrics line waits for the device): the ``--steps-after`` step times after
  the save minus as many median step times. On CUDA the copies run on a side stream and
  the next optimizer step waits for them on the device; this number includes that wait.
- ``save_s``, ``gb``, ``gb_per_s``: the whole save (copy, serialize, fsync, rename) of this
  rank's state; ``copy_s``: the device-to-host copy alone.
- ``resume_loss_rel_diff`` (``--verify-load``): the run is restarted from its checkpoint and
  its first step's loss compared with the uninterrupted run's.

``checkpoint_stall_s`` (top level) = the async row's max(stall_s, loop_stall_s), also written
as ``checkpoint_stall_s_1b`` (``_8b`` for llama3.1-8b, ...), which `benchmarks/gpu_frontier.py`
collects. Results go to ``--out`` (default
``benchmarks/results/checkpoint_stall-<preset>-<device>-<time>.json``), written after each
row so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kiln.config import load_config  # noqa: E402
from model import get_preset  # noqa: E402
from storage.token_shards import write_token_shard  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.loop import STOP_ENV, StopRequested, train  # noqa: E402
from trainer.metrics import read_metrics  # noqa: E402
from trainer.pretrain import PretrainRecipe  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def synthetic_tokens(root: Path, vocab_size: int, n_tokens: int) -> Path:
    """One shard of uniform random ids (dense compute and checkpoint size do not depend on their values)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab_size, size=n_tokens)
    docs = [ids[i:i + 4096].tolist() for i in range(0, n_tokens, 4096)]
    write_token_shard(root / "train" / "shard-00000", docs, vocab_size=vocab_size, eos_id=0)
    return root / "train"


def run_config(args: argparse.Namespace, train_dir: Path, out_dir: Path, mode: str) -> TrainConfig:
    max_len = max(get_preset(args.preset).max_seq_len, args.seq_len)
    return load_config(TrainConfig, None, [
        f"model.preset={args.preset}", f"model.overrides.max_seq_len={max_len}", f"data.train_dir={train_dir}",
        f"run.out_dir={out_dir}", f"data.seq_len={args.seq_len}", f"data.micro_batch_size={args.micro_batch_size}",
        "data.grad_accum_steps=1", f"run.device={args.device}", f"run.parallel={args.parallel}",
        f"run.compile={str(args.compile).lower()}", "run.log_every=1", "run.val_every=0", "schedule.warmup_steps=1",
        f"run.steps={args.save_at + args.steps_after + 10}", f"checkpoint.every_steps={args.save_at}",
        "checkpoint.keep_last=1", "checkpoint.keep_best=false", f"checkpoint.async_save={str(mode == 'async').lower()}",
        *args.set,
    ])


def run_until(cfg: TrainConfig, stop_after: int) -> None:
    os.environ[STOP_ENV] = str(stop_after)
    try:
        train(cfg, PretrainRecipe)
        raise SystemExit(f"the run did not stop after step {stop_after}")
    except StopRequested:
        pass
    finally:
        os.environ.pop(STOP_ENV, None)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        torch._dynamo.reset()


def measure(args: argparse.Namespace, train_dir: Path, out_dir: Path, mode: str) -> dict[str, Any]:
    """One mode: train to the save and past it, then read the loop's own records."""
    cfg = run_config(args, train_dir, out_dir, mode)
    stop = args.save_at + args.steps_after
    run_until(cfg, stop)
    saves = read_metrics(out_dir / "metrics.jsonl", "checkpoint")
    if [r["step"] for r in saves] != [args.save_at]:
        raise SystemExit(f"{mode}: expected one checkpoint at step {args.save_at}, got {saves}")
    save = saves[0]
    steps = read_metrics(out_dir / "metrics.jsonl", "train")
    elapsed = {m["step"]: m["elapsed"] for m in steps}
    dt = {s: elapsed[s] - elapsed[s - 1] for s in elapsed if s - 1 in elapsed}
    around = [s for s in dt if args.save_at < s <= stop]  # step s's time includes what followed step s-1
    # Steady steps: after warm-up (compile, allocator), away from the save.
    steady = [dt[s] for s in dt if 3 <= s <= args.save_at]
    median = statistics.median(steady) if steady else statistics.median(dt.values())
    loop_stall = sum(dt[s] for s in around) - median * len(around)
    row = {"mode": mode, **{k: save[k] for k in ("stall_s", "waited_s", "copy_s", "save_s", "gb", "gb_per_s")},
           "loop_stall_s": loop_stall, "step_time_s_median": median,
           "step_times_s": {s: round(v, 5) for s, v in sorted(dt.items())},
           "peak_mem_gb": max(m["peak_mem_gb"] for m in steps)}
    if args.verify_load:
        loss_then = next(m["loss"] for m in steps if m["step"] == args.save_at + 1)
        run_until(cfg, args.save_at + 1)  # resumes from the checkpoint, trains one step, stops before any save
        loss_now = next(m["loss"] for m in read_metrics(out_dir / "metrics.jsonl", "train")
                        if m["step"] == args.save_at + 1)
        row["resume_loss_rel_diff"] = abs(loss_now - loss_then) / abs(loss_then)
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--preset", default="1b" if cuda else "debug")
    p.add_argument("--seq-len", type=int, default=2048 if cuda else 64)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--parallel", default="fsdp" if cuda else "none", help="run.parallel (fsdp: DCP shards)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--save-at", type=int, default=10, help="the step saved (steps before it warm up)")
    p.add_argument("--steps-after", type=int, default=5, help="steps timed after the save")
    p.add_argument("--modes", nargs="+", choices=["async", "sync"], default=["async", "sync"])
    p.add_argument("--verify-load", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--set", nargs="*", default=[], help="more train config overrides (key=value)")
    p.add_argument("--work-dir", default=None, help="where checkpoints go (default: a temp dir, removed after)")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) if args.out else RESULTS / f"checkpoint_stall-{args.preset}-{args.device}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="kiln-ckpt-bench-", dir=args.work_dir))
    report: dict[str, Any] = {
        "benchmark": "checkpoint_stall",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "preset": args.preset, "seq_len": args.seq_len,
        "micro_batch_size": args.micro_batch_size, "parallel": args.parallel, "compile": args.compile,
        "overrides": args.set, "rows": [], "checkpoint_stall_s": None,
    }
    try:
        vocab = get_preset(args.preset).vocab_size
        need = (args.save_at + args.steps_after + 2) * args.micro_batch_size * (args.seq_len + 1)
        train_dir = synthetic_tokens(work / "tokens", vocab, max(need, 65536))
        for mode in args.modes:
            row = measure(args, train_dir, work / f"run-{mode}", mode)
            shutil.rmtree(work / f"run-{mode}", ignore_errors=True)  # at 8B one checkpoint fills most of a disk
            report["rows"].append(row)
            if mode == "async":  # also as checkpoint_stall_s_1b / _8b, the key gpu_frontier.py collects
                report["checkpoint_stall_s"] = max(row["stall_s"], row["loop_stall_s"])
                report[f"checkpoint_stall_s_{args.preset.split('-')[-1]}"] = report["checkpoint_stall_s"]
            out.write_text(json.dumps(report, indent=1))
            print(json.dumps({k: v for k, v in row.items() if k != "step_times_s"}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
