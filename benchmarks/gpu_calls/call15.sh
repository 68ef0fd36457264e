#!/usr/bin/env bash
# GPU call 15: call 14's FP8-head run and call 13's Kahan run both ended ~1.5 % above call 13's bf16 reference,
# parting from it the same way as the learning rate decays. Is the reference itself that far from a repeat of
# itself, and does FP8 on every block linear with the fused loss (no FP8 head, fp32 weights) stay within 1 %?
# First Kiln's best 1B in that clean configuration (untied, fp32 weights, FP8 on all block linears, 16384-token
# loss chunks), then 1000 steps each of a repeat of the bf16 reference and of that FP8 configuration on the same
# real tokens (carry .whl and .devdata). One tarball.
# Result: 82,021 tok/s; bf16 repeat val 4.960, FP8 on all block linears 4.976.
set -u
R=/tmp/r15; NAME=call15; BUDGET=560
# shellcheck source=lib.sh
source benchmarks/gpu_calls/lib.sh
mkdir -p $R/q
kiln 1b-best-fp32w-filterall 90 --preset 1b --seq-len 2048 --steps 20 --warmup 8 --fused-loss --micro-batch-size 32 \
  --untied-head --precision fp8-tensorwise --fp8-filter all --fused-loss-chunk 16384
( while sleep 20; do for d in $R/q/run-*; do cp "$d/metrics.jsonl" "$R/q/${d##*/run-}.partial.jsonl" 2>/dev/null; done; pack; done ) & SAVER=$!
timeout "$(( $(left) - 5 ))" python3 benchmarks/fp8_quality.py run --tokens .devdata/tokens --out $R/q --steps 1000 \
  --precisions bf16-repeat=bf16 "fp8all=fp8-tensorwise,run.fp8_filter=all,run.fused_loss=true" \
  --preset 1b --micro-batch 2 --seq-len 2048 --vocab-size 32000 >> $LOG 2>&1
echo "quality rc=$?" >> $LOG; kill $SAVER; for d in $R/q/run-*; do cp "$d/metrics.jsonl" "$R/q/${d##*/run-}.partial.jsonl" 2>/dev/null; done
echo "=== done $(date +%T)" >> $LOG; pack
