#!/usr/bin/env bash
# GPU call 2: torchtitan 0.2.2 1B rows (bf16, fp8 tensorwise), Kiln 125m, then FP8 vs bf16 quality (1000 steps).
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
LOG=$OUT/call2.log
tt() { name=$1; shift; echo "=== $name $(date +%T)" >> $LOG
  timeout 130 torchrun --standalone --nproc-per-node 1 benchmarks/baselines/torchtitan_runner.py --compile --steps 20 --warmup 8 --seq-len 2048 "$@" --out $OUT/$name.json > /tmp/$name.log 2>&1
  echo "rc=$?" >> $LOG; grep -E "tok/s|Error|error" /tmp/$name.log | tail -n 4 >> $LOG; tail -n 2 /tmp/$name.log >> $LOG; }
tt tt-1b-bf16-mb8 --shape 1b --batch-size 8
tt tt-1b-fp8t-mb8 --shape 1b --batch-size 8 --float8 tensorwise
echo "=== quality $(date +%T)" >> $LOG
mkdir -p /tmp/q
timeout 300 python3 benchmarks/fp8_quality.py run --tokens .devdata/tokens --out /tmp/q --steps 1000 --precisions bf16 fp8-tensorwise --preset 1b --micro-batch 2 --seq-len 2048 --vocab-size 32000 >> $LOG 2>&1
echo "quality rc=$?" >> $LOG
cp /tmp/q/*.json $OUT/ 2>>$LOG; for d in /tmp/q/run-*; do cp $d/metrics.jsonl $OUT/$(basename $d).jsonl; done
tail -n 5 /tmp/q/*.log >> $LOG 2>/dev/null
echo "=== done $(date +%T)" >> $LOG
