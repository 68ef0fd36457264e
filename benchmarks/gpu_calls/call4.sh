#!/usr/bin/env bash
# GPU call 4: async checkpoint CUDA tests + 1B stall (async and sync), Kiln 1B best config untied, 125m mb32.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
LOG=$OUT/call4.log
echo "=== tests $(date +%T)" >> $LOG
timeout 100 python3 -m pytest tests/trainer/test_async_checkpoint.py -q -p no:cacheprovider -n 0 -k cuda >> $LOG 2>&1; echo "rc=$?" >> $LOG
echo "=== stall $(date +%T)" >> $LOG
timeout 200 python3 benchmarks/checkpoint_stall.py --preset 1b --seq-len 2048 --micro-batch-size 8 --compile --modes async sync --out $OUT/checkpoint_stall_1b.json > /tmp/stall.log 2>&1; echo "rc=$?" >> $LOG
grep -E '^\{|Error|checkpoint step|stall' /tmp/stall.log | tail -n 8 >> $LOG
kiln() { name=$1; t=$2; shift 2; echo "=== $name $(date +%T)" >> $LOG
  timeout $t python3 benchmarks/train_throughput.py --compile on --vocab-sizes none "$@" --out $OUT/$name.json > /tmp/$name.log 2>&1
  echo "rc=$?" >> $LOG; grep -E "tok/s|Error|error" /tmp/$name.log | tail -n 3 >> $LOG; }
kiln 1b-fp8t-fused-untied-mb16 100 --preset 1b --seq-len 2048 --micro-batch-size 16 --steps 20 --warmup 8 --precision fp8-tensorwise --fused-loss --untied-head
kiln 125m-bf16-mb32 70 --preset 125m --seq-len 2048 --micro-batch-size 32 --steps 20 --warmup 8
echo "=== done $(date +%T)" >> $LOG
