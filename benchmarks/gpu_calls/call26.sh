#!/usr/bin/env bash
# GPU call 26 (2026-12-04, fifth session; carry .whl (torchao) and .devdata (the 0.1 GB scale corpus's
# pretokenize artifact, rebuilt as benchmarks/gpu_calls/README.md says)). Call 25's best 125M configuration
# (micro-batch 128, 32768-token loss chunks) and its micro-batch-64 reference again, interleaved, so that the
# goal does not rest on one row of one machine; 65536-token chunks; then the run never made: 1000 steps of the
# FP8 head together with Kahan bf16 weights (each passed the 1 % gate alone), for the three bf16 references of
# benchmarks/results/quality_runs/.
# Result: micro-batch 64 569,490 / 568,753; micro-batch 128 with 32768-token chunks 589,240 / 586,538, with 65536
# 591,576 (52.9 %); the FP8-head + Kahan run: val 4.950 after 1000 steps (-0.21 % against the bf16 median).
set -u
R=/tmp/r26; NAME=call26; BUDGET=${BUDGET:-570}
# shellcheck source=lib.sh
source benchmarks/gpu_calls/lib.sh
mkdir -p $R/q
P="--preset 125m --seq-len 2048 --steps 20 --warmup 8 --fused-loss"
kiln 125m-mb64-ref 60 $P --micro-batch-size 64
kiln 125m-mb128-c32k 70 $P --micro-batch-size 128 --fused-loss-chunk 32768
kiln 125m-mb128-c64k 70 $P --micro-batch-size 128 --fused-loss-chunk 65536
kiln 125m-mb64-ref-2 60 $P --micro-batch-size 64
kiln 125m-mb128-c32k-2 70 $P --micro-batch-size 128 --fused-loss-chunk 32768
( while sleep 20; do for d in $R/q/run-*; do cp "$d/metrics.jsonl" "$R/q/${d##*/run-}.partial.jsonl" 2>/dev/null; done; pack; done ) & SAVER=$!
echo "=== quality $(date +%T) (limit $(( $(left) - 5 )) s)" >> $LOG
timeout "$(( $(left) - 5 ))" python3 benchmarks/fp8_quality.py run --tokens .devdata/tokens --out $R/q --steps 1000 \
  --precisions "fp8head-kahan=fp8-tensorwise,run.fp8_filter=all,run.fused_loss=true,run.fp8_head=true,run.param_dtype=bfloat16,optim.bf16_update=kahan" \
  --preset 1b --micro-batch 2 --seq-len 2048 --vocab-size 32000 >> $LOG 2>&1
echo "quality rc=$?" >> $LOG; kill $SAVER; for d in $R/q/run-*; do cp "$d/metrics.jsonl" "$R/q/${d##*/run-}.partial.jsonl" 2>/dev/null; done
echo "=== done $(date +%T)" >> $LOG; pack
