#!/usr/bin/env bash
# GPU call 14: whether fp32- and bf16-weight builds start from the same weights on CUDA (init_check.py: call 13's
# Kahan run differed from its fp32 reference already at step 10); the output head in FP8 too (run.fp8_head): its
# CUDA tests, Kiln's best 1B with it at fp32 weights (Kahan bf16 weights lost 1.9 % in call 13, so the best
# configuration keeps fp32 ones) and at the stochastic bf16 weights of the 84,361 tok/s row (the direct A/B),
# 1000 steps of the fp32-weights configuration on real tokens (carry .whl and .devdata) against call 13's bf16
# reference; 125M with PyTorch's FlashAttention-2 instead of cuDNN attention (run.sdpa_backend=flash). One tarball.
# Result: init identical; 3 tests passed; 88,999 / 88,215 tok/s; quality val 4.970 (the run finished; the call's
# 200 s limit cut its final checkpoint save); 125M with FlashAttention-2 482,632 tok/s.
set -u
R=/tmp/r14; NAME=call14
# shellcheck source=lib.sh
source benchmarks/gpu_calls/lib.sh
mkdir -p $R/q
timeout 60 python3 benchmarks/gpu_calls/init_check.py > $R/init_check.log 2>&1; tail -n 4 $R/init_check.log >> $LOG; pack
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/model/test_fused_loss.py tests/trainer/test_float8.py \
  -k "cuda_fp8_head or (pretrain_run and True)" 2>&1 | grep -E "^E |passed|failed|error" | head -n 10 >> $LOG; pack
B="--preset 1b --seq-len 2048 --steps 20 --warmup 8 --fused-loss --micro-batch-size 32 --untied-head --precision fp8-tensorwise --fp8-filter all --fused-loss-chunk 16384 --fp8-head"
kiln 1b-best-fp8head-fp32w 90 $B
( while sleep 20; do cp $R/q/run-*/metrics.jsonl $R/q/ 2>/dev/null; pack; done ) & SAVER=$!
timeout 200 python3 benchmarks/fp8_quality.py run --tokens .devdata/tokens --out $R/q --steps 1000 \
  --precisions "fp8head=fp8-tensorwise,run.fp8_filter=all,run.fused_loss=true,run.fp8_head=true" \
  --preset 1b --micro-batch 2 --seq-len 2048 --vocab-size 32000 >> $LOG 2>&1
echo "quality rc=$?" >> $LOG; kill $SAVER; cp $R/q/run-*/metrics.jsonl $R/q/ 2>/dev/null; pack
kiln 1b-best-fp8head-sr 90 $B --param-dtype bfloat16
kiln 125m-mb64-flash 80 --preset 125m --seq-len 2048 --steps 20 --warmup 8 --fused-loss --micro-batch-size 64 --sdpa-backend flash
echo "=== done $(date +%T)" >> $LOG; pack
