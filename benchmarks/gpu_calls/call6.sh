#!/usr/bin/env bash
# GPU call 6: the stochastic-rounding check (eager vs compiled), 8B at micro-batch 2 (bf16 weights, no AC) in
# bf16 and FP8, 125M with the fused loss (profiled), 1B fused-loss memory at the same micro-batch, best 1B.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
LOG=$OUT/call6.log; START=$(date +%s)
left() { echo $(( 590 - ($(date +%s) - START) )); }
kiln() { name=$1; t=$2; shift 2; l=$(left); [ "$t" -gt "$l" ] && t=$l; [ "$t" -lt 30 ] && { echo "skip $name" >> $LOG; return 1; }
  echo "=== $name $(date +%T) (limit $t s)" >> $LOG
  timeout $t python3 benchmarks/train_throughput.py --compile on --vocab-sizes none "$@" --out $OUT/$name.json > /tmp/$name.log 2>&1
  rc=$?; echo "rc=$rc" >> $LOG; grep -E "tok/s|Error|error" /tmp/$name.log | tail -n 3 >> $LOG; return $rc; }
timeout 60 python3 benchmarks/gpu_calls/sr_check.py >> $LOG 2>&1
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/trainer/test_optim.py 2>&1 | tail -n 2 >> $LOG
E8="--preset llama3.1-8b --seq-len 4096 --steps 10 --warmup 4 --fused-loss --param-dtype bfloat16"
kiln 8b-bf16w-mb2 90 $E8 --micro-batch-size 2
kiln 8b-bf16w-mb2-fp8t 80 $E8 --micro-batch-size 2 --precision fp8-tensorwise
kiln 8b-bf16w-fp8t-all 80 $E8 --micro-batch-size 1 --precision fp8-tensorwise --fp8-filter all
E1="--seq-len 2048 --steps 20 --warmup 8"
kiln 125m-mb32-fused 75 --preset 125m $E1 --micro-batch-size 32 --fused-loss --profile $OUT
kiln 125m-mb64-fused 75 --preset 125m $E1 --micro-batch-size 64 --fused-loss
kiln 1b-untied-mb8-fused 80 --preset 1b $E1 --micro-batch-size 8 --untied-head --fused-loss
kiln 1b-untied-mb16-plain 80 --preset 1b $E1 --micro-batch-size 16 --untied-head
kiln 1b-fp8t-mb32-fused 80 --preset 1b $E1 --micro-batch-size 32 --fused-loss --precision fp8-tensorwise
kiln 1b-fp8t-mb16-fused-bf16w 80 --preset 1b $E1 --micro-batch-size 16 --fused-loss --precision fp8-tensorwise --param-dtype bfloat16
echo "=== done $(date +%T)" >> $LOG
