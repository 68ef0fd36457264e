#!/usr/bin/env bash
# GPU call 16 (the session's last ~5 device minutes): a third 1000-step bf16 reference on the same tokens, from the
# same seed. Calls 13 and 15 ran the same bf16 configuration and ended 1.4 % apart (val 4.890 and 4.960), while
# the FP8, FP8-head and Kahan runs all landed within 0.5 % of the second; a third run says which is typical.
# Result: val 4.975.
set -u
R=/tmp/r16; NAME=call16; BUDGET=225
# shellcheck source=lib.sh
source benchmarks/gpu_calls/lib.sh
mkdir -p $R/q
( while sleep 20; do cp $R/q/run-*/metrics.jsonl $R/q/bf16-repeat2.partial.jsonl 2>/dev/null; pack; done ) & SAVER=$!
timeout "$(( $(left) - 5 ))" python3 benchmarks/fp8_quality.py run --tokens .devdata/tokens --out $R/q --steps 1000 \
  --precisions bf16-repeat2=bf16 --preset 1b --micro-batch 2 --seq-len 2048 --vocab-size 32000 >> $LOG 2>&1
echo "quality rc=$?" >> $LOG; kill $SAVER; cp $R/q/run-*/metrics.jsonl $R/q/bf16-repeat2.partial.jsonl 2>/dev/null
echo "=== done $(date +%T)" >> $LOG; pack
