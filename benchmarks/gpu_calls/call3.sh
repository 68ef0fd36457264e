#!/usr/bin/env bash
# GPU call 3: Kiln 125m; 8B shape on one H200 (seq 4096, full AC, fused loss): Kiln bf16, torchtitan bf16, Kiln fp8.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
LOG=$OUT/call3.log
kiln() { name=$1; t=$2; shift 2; echo "=== $name $(date +%T)" >> $LOG
  timeout $t python3 benchmarks/train_throughput.py --compile on --vocab-sizes none "$@" --out $OUT/$name.json > /tmp/$name.log 2>&1
  echo "rc=$?" >> $LOG; grep -E "tok/s|Error|error" /tmp/$name.log | tail -n 4 >> $LOG; }
kiln 125m-bf16-mb16 80 --preset 125m --seq-len 2048 --micro-batch-size 16 --steps 20 --warmup 8
kiln 8b-bf16-ac-fused 190 --preset llama3.1-8b --seq-len 4096 --micro-batch-size 1 --steps 10 --warmup 4 --activation-checkpointing --fused-loss
echo "=== tt-8b-bf16 $(date +%T)" >> $LOG
timeout 170 torchrun --standalone --nproc-per-node 1 benchmarks/baselines/torchtitan_runner.py --compile --shape 8b --batch-size 1 --seq-len 4096 --steps 10 --warmup 4 --activation-checkpoint full --out $OUT/tt-8b-bf16.json > /tmp/tt8b.log 2>&1
echo "rc=$?" >> $LOG; grep -E "tok/s|Error|error|memory" /tmp/tt8b.log | tail -n 4 >> $LOG
kiln 8b-fp8t-ac-fused 150 --preset llama3.1-8b --seq-len 4096 --micro-batch-size 1 --steps 10 --warmup 4 --activation-checkpointing --fused-loss --precision fp8-tensorwise
echo "=== done $(date +%T)" >> $LOG
