#!/usr/bin/env python3
"""FP8 against bf16 on learning, not only speed: the same run in each precision, compared step by step.

    # on the GPU machine: train each precision from the same seed (so the same initial weights)
    # on the same real tokens (a Kiln pretokenize artifact's train/ and val/ splits)
    python3 benchmarks/fp8_quality.py run --tokens DIR --out OUT --steps 1000 \
        --precisions bf16 fp8-rowwise

    # anywhere: the figures and one PNG with both curves
    python3 benchmarks/fp8_quality.py report OUT/bf16.jsonl OUT/fp8-rowwise.jsonl \
        --json benchmarks/results/fp8_quality.json --png benchmarks/results/fp8_quality.png

A run may also be ``NAME=PRECISION,key=value,...``: that precision with more trainer overrides,
e.g. ``bf16-weights=bf16,run.param_dtype=bfloat16`` (bf16 weights with stochastically rounded
AdamW updates against the fp32-weights reference); ``report --figure`` names its summary key.

One 1000-step run at micro-batch 2 is a noisy reference: three bf16 runs of one configuration, same
seed and tokens, ended at validation losses 4.890, 4.960 and 4.975 (2026-12-04; the kernels are not
bitwise deterministic and early loss spikes amplify the difference), so a single reference can
fail a run that is as good as its own repeat. ``report --references N`` takes the first N files as
repeats of the reference and compares against their median, reporting their spread beside it.

The final training loss is the mean of the last 10 % of the logged train losses (one
step's loss is noisy: a batch's own difficulty moves it by more than 1 %); the final
validation loss is the last validation pass, on the same held-out batches in both
runs. "Diverged" means a non-finite loss, or a final loss above the loss at the end of
warmup.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.metrics import loss_figure, read_metrics  # noqa: E402


def parse_run(spec: str) -> tuple[str, str, list[str]]:
    """``PRECISION`` or ``NAME=PRECISION,key=value,...`` -> (name, precision, overrides)."""
    head, *overrides = spec.split(",")
    name, _, precision = head.rpartition("=")
    name = name or precision
    if not precision or (overrides and name == precision) or any("=" not in o for o in overrides):
        raise SystemExit(f"--precisions {spec!r}: expected PRECISION or NAME=PRECISION,key=value,...")
    return name, precision, overrides


def train(tokens: Path, out: Path, run: str, steps: int, preset: str, micro_batch: int, seq_len: int,
          vocab_size: int, extra: list[str]) -> Path:
    """One pretraining run (`parse_run`) with the benchmark's fixed settings; its metrics.jsonl, copied to ``out``."""
    name, precision, run_overrides = parse_run(run)
    run_dir = out / f"run-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    warmup = max(1, steps // 10)
    overrides = [
        f"model.preset={preset}", f"model.overrides.vocab_size={vocab_size}",
        f"data.train_dir={tokens / 'train'}", f"data.val_dir={tokens / 'val'}", f"data.seq_len={seq_len}",
        f"data.micro_batch_size={micro_batch}", "data.grad_accum_steps=1",
        f"run.out_dir={run_dir}", f"run.steps={steps}", f"run.precision={precision}", "run.compile=true",
        "run.log_every=10", f"run.val_every={max(1, steps // 4)}", "run.val_batches=20",
        f"schedule.warmup_steps={warmup}", f"checkpoint.every_steps={steps * 10}",
        *run_overrides, *extra]
    cmd = [sys.executable, "-m", "trainer.pretrain", "--config", str(REPO / "configs" / "train" / "1b.toml"),
           *overrides]
    started = time.perf_counter()
    log = out / f"{name}.log"
    with open(log, "w") as fh:
        code = subprocess.call(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    print(f"[fp8_quality] {name}: exit {code} in {time.perf_counter() - started:.0f} s; log {log}", flush=True)
    metrics = out / f"{name}.jsonl"
    if (run_dir / "metrics.jsonl").exists():
        shutil.copyfile(run_dir / "metrics.jsonl", metrics)
    if code:
        raise SystemExit(f"{name} run failed (exit {code}); see {log}")
    return metrics


def summarize(path: Path) -> dict[str, Any]:
    """Final train loss (mean of the last 10 % of logged steps), final val loss, divergence, throughput."""
    train_rows = read_metrics(path, "train")
    val_rows = read_metrics(path, "val")
    if not train_rows:
        raise SystemExit(f"{path}: no train lines; did the run start?")
    losses = [r["loss"] for r in train_rows]
    tail = losses[-max(1, len(losses) // 10):]
    warm_end = losses[min(len(losses) - 1, max(1, len(losses) // 10))]
    final = sum(tail) / len(tail)
    speeds = sorted(r["tokens_per_s"] for r in train_rows[len(train_rows) // 2:] if r.get("tokens_per_s"))
    return {"steps": train_rows[-1]["step"], "final_train_loss": round(final, 5),
            "final_val_loss": val_rows[-1]["val_loss"] if val_rows else None,
            "diverged": any(not math.isfinite(x) for x in losses) or final > warm_end,
            "tokens_per_s_median": speeds[len(speeds) // 2] if speeds else None,
            "peak_mem_gb": max((r.get("peak_mem_gb") or 0) for r in train_rows)}


def rel_diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(abs(b - a) / abs(a), 5)


def report(paths: list[Path], json_out: Path | None, png: Path | None,
           figure: str = "fp8_loss_rel_diff", references: int = 1) -> dict[str, Any]:
    """The first `references` files are the reference runs (bf16); each other one is compared with them.

    With several references (repeats of one configuration) the reference losses are their median, so one
    outlying run cannot pass or fail the others, and ``reference_spread`` says how far the repeats
    themselves lie apart (max - min over median): a difference below it is not resolved. `figure` names
    the worst difference."""
    if not 1 <= references <= len(paths):
        raise SystemExit(f"--references {references}: needs 1 <= N <= the number of files ({len(paths)})")
    stems = [p.stem for p in paths]
    if len(set(stems)) < len(stems):
        raise SystemExit(f"runs are named by their file stems, and these repeat: {sorted(stems)}; rename the files")
    runs = {p.stem: summarize(p) for p in paths}
    ref_names = stems[:references]
    ref_runs = [runs[name] for name in ref_names]
    ref = {key: _median([r[key] for r in ref_runs]) for key in ("final_train_loss", "final_val_loss")}
    result: dict[str, Any] = {"reference": ref_names[0] if references == 1 else ref_names, "runs": runs,
                              "comparisons": {}}
    if references > 1:  # each loss's median on its own: the train and val medians may come from two runs
        result["reference_median"] = ref
        result["reference_spread"] = {key: _spread([r[key] for r in ref_runs]) for key in ref}
        result["diverged_references"] = [name for name, r in zip(ref_names, ref_runs, strict=True) if r["diverged"]]
    for name, run in runs.items():
        if name in ref_names:
            continue
        train_diff = rel_diff(ref["final_train_loss"], run["final_train_loss"])
        val_diff = rel_diff(ref["final_val_loss"], run["final_val_loss"])
        result["comparisons"][name] = {
            "train_loss_rel_diff": train_diff, "val_loss_rel_diff": val_diff,
            "within_1pct": bool(train_diff is not None and train_diff <= 0.01
                                and (val_diff is None or val_diff <= 0.01)),
            "diverged": run["diverged"]}
    diffs = [max(v for v in (c["train_loss_rel_diff"], c["val_loss_rel_diff"]) if v is not None)
             for c in result["comparisons"].values()]
    result[figure] = max(diffs) if diffs else None
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=1) + "\n")
    if png:
        plot(paths, png)
    return result


def _median(values: Sequence[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    return statistics.median(known) if known else None


def _spread(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    middle = _median(known)
    return round((max(known) - min(known)) / middle, 5) if len(known) > 1 and middle else None


def plot(paths: list[Path], png: Path) -> None:
    """Train and val loss of every run against step, in one figure (`trainer.metrics.loss_figure`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = loss_figure(*paths)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="train each precision on the GPU machine")
    run.add_argument("--tokens", type=Path, required=True, help="a pretokenize artifact (with train/ and val/)")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--steps", type=int, default=1000)
    run.add_argument("--precisions", nargs="+", default=["bf16", "fp8-rowwise"],
                     help="runs, the first the reference: PRECISION or NAME=PRECISION,key=value,...")
    run.add_argument("--preset", default="1b")
    run.add_argument("--micro-batch", type=int, default=4)
    run.add_argument("--seq-len", type=int, default=2048)
    run.add_argument("--vocab-size", type=int, required=True, help="the tokenizer's padded vocab size")
    run.add_argument("extra", nargs="*", help="more key=value overrides for both runs")
    rep = sub.add_parser("report", help="compare metrics.jsonl files (first = reference)")
    rep.add_argument("metrics", type=Path, nargs="+")
    rep.add_argument("--json", type=Path)
    rep.add_argument("--png", type=Path)
    rep.add_argument("--figure", default="fp8_loss_rel_diff", help="the summary key of the worst rel. diff")
    rep.add_argument("--references", type=int, default=1,
                     help="how many of the first files are reference runs (repeats: their median is the reference)")
    args = parser.parse_args()
    if args.cmd == "run":
        args.out.mkdir(parents=True, exist_ok=True)
        paths = [train(args.tokens, args.out, p, args.steps, args.preset, args.micro_batch, args.seq_len,
                       args.vocab_size, args.extra) for p in args.precisions]
        print(json.dumps(report(paths, args.out / "fp8_quality.json", None), indent=1))
    else:
        print(json.dumps(report(args.metrics, args.json, args.png, args.figure, args.references), indent=1))


if __name__ == "__main__":
    main()
