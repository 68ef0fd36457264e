#!/usr/bin/env bash
# GPU call 10 (2026-12-03): 1000 steps of bf16 with fp32 weights against bf16 weights (stochastically rounded
# AdamW updates, the 8B configuration) from the same initial weights on the same real tokens (.devdata/tokens,
# the 0.1 GB scale corpus's pretokenize artifact); Kiln's best 1B with bigger fused-loss chunks (fewer fp32
# weight-gradient accumulations). One tarball.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
R=/tmp/r10; mkdir -p $R; LOG=$R/call10.log; START=$(date +%s)
left() { echo $(( 580 - ($(date +%s) - START) )); }
pack() { tar --exclude='run-*' -C $R -cf $OUT/r10.tar .; }
kiln() { name=$1; t=$2; shift 2; l=$(left); [ "$t" -gt "$l" ] && t=$l; [ "$t" -lt 40 ] && { echo "skip $name" >> $LOG; return 1; }
  echo "=== $name $(date +%T) (limit $t s)" >> $LOG
  timeout $t python3 benchmarks/train_throughput.py --compile on --vocab-sizes none "$@" --out $R/$name.json > $R/$name.log 2>&1
  rc=$?; echo "rc=$rc" >> $LOG; grep -E "tok/s|Error|error" $R/$name.log | tail -n 3 >> $LOG; pack; return $rc; }
echo "=== quality $(date +%T)" >> $LOG
mkdir -p $R/q
( while sleep 20; do cp $R/q/run-*/metrics.jsonl $R/q/ 2>/dev/null; pack; done ) & SAVER=$!
timeout 340 python3 benchmarks/fp8_quality.py run --tokens .devdata/tokens --out $R/q --steps 1000 \
  --precisions bf16 bf16-weights=bf16,run.param_dtype=bfloat16 --preset 1b --micro-batch 2 --seq-len 2048 \
  --vocab-size 32000 >> $LOG 2>&1
echo "quality rc=$?" >> $LOG; kill $SAVER
rm -rf $R/q/run-*/checkpoints $R/q/run-*/final; pack
B="--preset 1b --seq-len 2048 --steps 20 --warmup 8 --fused-loss --micro-batch-size 32 --untied-head --precision fp8-tensorwise --param-dtype bfloat16"
kiln 1b-best-chunk8192 85 $B --fused-loss-chunk 8192
kiln 1b-best-chunk16384 85 $B --fused-loss-chunk 16384
echo "=== done $(date +%T)" >> $LOG; pack
