#!/usr/bin/env bash
# GPU call 13 (planned for the next session with device time): the Kahan bf16 update on the GPU. Its CUDA tests;
# 1000 steps of bf16 compute with fp32 weights against bf16 weights with Kahan residuals, from the same initial
# weights on the same real tokens (carry .whl and .devdata, as call10.sh); then the 8B shape with Kahan bf16
# weights at micro-batch 1 and 2 (14 bytes a parameter: does micro-batch 2 still fit?). One tarball.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
R=/tmp/r13; mkdir -p $R/q; LOG=$R/call13.log; START=$(date +%s)
left() { echo $(( 580 - ($(date +%s) - START) )); }
pack() { tar --exclude='run-*' -C $R -cf $OUT/r13.tar .; }
kiln() { name=$1; t=$2; shift 2; l=$(left); [ "$t" -gt "$l" ] && t=$l; [ "$t" -lt 40 ] && { echo "skip $name" >> $LOG; return 1; }
  echo "=== $name $(date +%T) (limit $t s)" >> $LOG
  timeout $t python3 benchmarks/train_throughput.py --compile on --vocab-sizes none "$@" --out $R/$name.json > $R/$name.log 2>&1
  rc=$?; echo "rc=$rc" >> $LOG; grep -E "tok/s|Error|error" $R/$name.log | tail -n 3 >> $LOG; pack; return $rc; }
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/trainer/test_optim.py -k cuda 2>&1 | grep -E "^E |passed|failed" | head -n 8 >> $LOG; pack
( while sleep 20; do cp $R/q/run-*/metrics.jsonl $R/q/ 2>/dev/null; pack; done ) & SAVER=$!
timeout 340 python3 benchmarks/fp8_quality.py run --tokens .devdata/tokens --out $R/q --steps 1000 \
  --precisions bf16 bf16-kahan=bf16,run.param_dtype=bfloat16,optim.bf16_update=kahan --preset 1b --micro-batch 2 \
  --seq-len 2048 --vocab-size 32000 >> $LOG 2>&1
echo "quality rc=$?" >> $LOG; kill $SAVER; pack
E8="--preset llama3.1-8b --seq-len 4096 --steps 10 --warmup 4 --fused-loss --param-dtype bfloat16 --bf16-update kahan"
kiln 8b-kahan-mb1 110 $E8 --micro-batch-size 1
kiln 8b-kahan-mb2 110 $E8 --micro-batch-size 2
echo "=== done $(date +%T)" >> $LOG; pack
