#!/usr/bin/env bash
# GPU call 5: the 8B shape with bf16 weights + fp32 AdamW moments (run.param_dtype=bfloat16, 12 B/param):
# the least recompute that fits (none, else every 2nd block), then FP8 on it; torchtitan with selective AC.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
LOG=$OUT/call5.log; START=$(date +%s)
left() { echo $(( 585 - ($(date +%s) - START) )); }
kiln() { name=$1; t=$2; shift 2; l=$(left); [ "$t" -gt "$l" ] && t=$l; echo "=== $name $(date +%T) (limit $t s)" >> $LOG
  timeout $t python3 benchmarks/train_throughput.py --compile on --vocab-sizes none "$@" --out $OUT/$name.json > /tmp/$name.log 2>&1
  rc=$?; echo "rc=$rc" >> $LOG; grep -E "tok/s|Error|error" /tmp/$name.log | tail -n 4 >> $LOG; return $rc; }
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/trainer/test_optim.py >> $LOG 2>&1
E8="--preset llama3.1-8b --seq-len 4096 --micro-batch-size 1 --steps 10 --warmup 4 --fused-loss --param-dtype bfloat16"
if kiln 8b-bf16w-noac 200 $E8 && ! grep -q '"error"' $OUT/8b-bf16w-noac.json; then AC=""; else
  AC="--activation-checkpointing --ac-every 2"; kiln 8b-bf16w-ac2 180 $E8 $AC; fi
kiln 8b-bf16w-fp8t 170 $E8 $AC --precision fp8-tensorwise
l=$(left); echo "=== tt-8b-selective $(date +%T) (limit $l s)" >> $LOG
[ "$l" -gt 60 ] && timeout $l torchrun --standalone --nproc-per-node 1 benchmarks/baselines/torchtitan_runner.py --compile --shape 8b --batch-size 1 --seq-len 4096 --steps 10 --warmup 4 --activation-checkpoint selective --selective-ac-option op --out $OUT/tt-8b-selective.json > /tmp/tt8b.log 2>&1
echo "rc=$?" >> $LOG; grep -E "tok/s|Error|error|memory" /tmp/tt8b.log | tail -n 4 >> $LOG; cp /tmp/*.log $OUT/ 2>/dev/null
echo "=== done $(date +%T)" >> $LOG
