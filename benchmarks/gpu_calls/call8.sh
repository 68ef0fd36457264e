#!/usr/bin/env bash
# GPU call 8: Kiln's best 1B untied (FP8 tensorwise, fused loss, micro-batch 32), fp32 and bf16 weights, the
# first profiled; one tarball.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
R=/tmp/r8; mkdir -p $R; LOG=$OUT/call8.log
E1="--preset 1b --seq-len 2048 --steps 20 --warmup 8 --fused-loss --micro-batch-size 32 --untied-head --precision fp8-tensorwise"
for v in "1b-untied-fp8t-mb32-fused:--profile $R" "1b-untied-fp8t-mb32-fused-bf16w:--param-dtype bfloat16"; do
  name=${v%%:*}; extra=${v#*:}; echo "=== $name $(date +%T)" >> $LOG
  # shellcheck disable=SC2086
  timeout 170 python3 benchmarks/train_throughput.py --compile on --vocab-sizes none $E1 $extra --out $R/$name.json > $R/$name.log 2>&1
  echo "rc=$?" >> $LOG; grep -E "tok/s|Error|error" $R/$name.log | tail -n 3 >> $LOG; tar -C $R -cf $OUT/r8.tar .
done
