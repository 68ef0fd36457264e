#!/usr/bin/env bash
# GPU call 9 (2026-12-03): the fused loss's float32-accumulating GEMM (CUDA test), torchtitan 0.2.2's 1B bf16
# re-measured in the same call as Kiln's best 1B untied (FP8 tensorwise, fused loss, micro-batch 32, bf16
# weights), and that best row with bigger loss chunks, every block linear in FP8, and max-autotune. One tarball.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
R=/tmp/r9; mkdir -p $R; LOG=$R/call9.log; START=$(date +%s)
left() { echo $(( 580 - ($(date +%s) - START) )); }
pack() { tar -C $R -cf $OUT/r9.tar .; }
kiln() { name=$1; t=$2; shift 2; l=$(left); [ "$t" -gt "$l" ] && t=$l; [ "$t" -lt 40 ] && { echo "skip $name" >> $LOG; return 1; }
  echo "=== $name $(date +%T) (limit $t s)" >> $LOG
  timeout $t python3 benchmarks/train_throughput.py --compile on --vocab-sizes none "$@" --out $R/$name.json > $R/$name.log 2>&1
  rc=$?; echo "rc=$rc" >> $LOG; grep -E "tok/s|Error|error" $R/$name.log | tail -n 3 >> $LOG; pack; return $rc; }
tt() { name=$1; t=$2; shift 2; echo "=== $name $(date +%T)" >> $LOG
  timeout $t torchrun --standalone --nproc-per-node 1 benchmarks/baselines/torchtitan_runner.py --compile --steps 20 --warmup 8 --seq-len 2048 "$@" --out $R/$name.json > $R/$name.log 2>&1
  echo "rc=$?" >> $LOG; grep -E "tok/s|Error|error" $R/$name.log | tail -n 3 >> $LOG; pack; }
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/model/test_fused_loss.py 2>&1 | grep -E "^E|passed|failed|Error" | head -n 12 >> $LOG; pack
B="--preset 1b --seq-len 2048 --steps 20 --warmup 8 --fused-loss --micro-batch-size 32 --untied-head --precision fp8-tensorwise --param-dtype bfloat16"
kiln 1b-best-addmm 95 $B
tt tt-1b-bf16-mb8 125 --shape 1b --batch-size 8
kiln 1b-best-chunk8192 90 $B --fused-loss-chunk 8192
kiln 1b-best-filterall 90 $B --fp8-filter all
kiln 1b-best-autotune 240 $B --compile-mode max-autotune-no-cudagraphs
echo "=== done $(date +%T)" >> $LOG; pack
