#!/usr/bin/env bash
# GPU call 7: the rounding check with a full 31-bit salt; 1B FP8 vs bf16 at the same micro-batch (16, 32, fused
# loss), untied best 1B; 125M at micro-batch 64 profiled, and with bf16 weights. Files go into one tarball.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
R=/tmp/r7; mkdir -p $R; LOG=$OUT/call7.log; START=$(date +%s)
left() { echo $(( 585 - ($(date +%s) - START) )); }
kiln() { name=$1; t=$2; shift 2; l=$(left); [ "$t" -gt "$l" ] && t=$l; [ "$t" -lt 30 ] && { echo "skip $name" >> $LOG; return 1; }
  echo "=== $name $(date +%T) (limit $t s)" >> $LOG
  timeout $t python3 benchmarks/train_throughput.py --compile on --vocab-sizes none "$@" --out $R/$name.json > $R/$name.log 2>&1
  rc=$?; echo "rc=$rc" >> $LOG; grep -E "tok/s|Error|error" $R/$name.log | tail -n 3 >> $LOG
  tar -C $R -cf $OUT/r7.tar .; return $rc; }
timeout 60 python3 benchmarks/gpu_calls/sr_check.py >> $LOG 2>&1
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/trainer/test_optim.py 2>&1 | grep -E "^E|passed|failed" | head -n 8 >> $LOG
E1="--preset 1b --seq-len 2048 --steps 20 --warmup 8 --fused-loss"
kiln 1b-untied-fp8t-mb32-fused 80 $E1 --micro-batch-size 32 --untied-head --precision fp8-tensorwise
kiln 1b-bf16-mb16-fused 75 $E1 --micro-batch-size 16
kiln 1b-bf16-mb32-fused 80 $E1 --micro-batch-size 32
kiln 125m-mb64-fused-prof 80 --preset 125m --seq-len 2048 --steps 20 --warmup 8 --micro-batch-size 64 --fused-loss --profile $R
kiln 125m-mb64-fused-bf16w 75 --preset 125m --seq-len 2048 --steps 20 --warmup 8 --micro-batch-size 64 --fused-loss --param-dtype bfloat16
echo "=== done $(date +%T)" >> $LOG
