#!/usr/bin/env bash
# GPU call 13 (2026-12-04): the Kahan bf16 update on the GPU. Its CUDA tests (5 passed); 1000 steps of bf16 compute
# with fp32 weights against bf16 weights with Kahan residuals, from the same initial weights on the same real tokens
# (carry .whl and .devdata): +1.9 % final val loss against this call's reference, which turned out the outlier of
# three bf16 runs (calls 15, 16: +0.5 % against their median); then the 8B shape with Kahan bf16 weights at
# micro-batch 1 and 2 (9,094 and 10,169 tok/s; micro-batch 2 peaks at 140.6 GB). One tarball.
set -u
R=/tmp/r13; NAME=call13
# shellcheck source=lib.sh
source benchmarks/gpu_calls/lib.sh
mkdir -p $R/q
timeout 130 python3 -m pytest -q -p no:cacheprovider tests/trainer/test_optim.py tests/trainer/test_pretrain_loop.py -k cuda 2>&1 | grep -E "^E |passed|failed" | head -n 8 >> $LOG; pack
( while sleep 20; do cp $R/q/run-*/metrics.jsonl $R/q/ 2>/dev/null; pack; done ) & SAVER=$!
timeout 340 python3 benchmarks/fp8_quality.py run --tokens .devdata/tokens --out $R/q --steps 1000 \
  --precisions bf16 bf16-kahan=bf16,run.param_dtype=bfloat16,optim.bf16_update=kahan --preset 1b --micro-batch 2 \
  --seq-len 2048 --vocab-size 32000 >> $LOG 2>&1
echo "quality rc=$?" >> $LOG; kill $SAVER; pack
E8="--preset llama3.1-8b --seq-len 4096 --steps 10 --warmup 4 --fused-loss --param-dtype bfloat16 --bf16-update kahan"
kiln 8b-kahan-mb1 110 $E8 --micro-batch-size 1
kiln 8b-kahan-mb2 110 $E8 --micro-batch-size 2
echo "=== done $(date +%T)" >> $LOG; pack
