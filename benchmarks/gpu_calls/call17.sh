#!/usr/bin/env bash
# GPU call 17 (planned, not run: 2026-12-04's device time was spent): what is left of issue 16 on one GPU.
# - 125M (the one missed goal, 48.8 % MFU): without FSDP on its 1-rank mesh (autocast instead of FSDP's bf16
#   params: no per-block all-gather copies and hooks, the suspects for its ~5 % idle), at micro-batch 64 and 96,
#   and with 32768-token loss chunks (4 a step instead of 16; the fused loss is 8 % of its kernel time).
# - 8B with the FP8 head and Kahan bf16 weights (the quality-gated recipe; call 14 measured the head at 1B only),
#   and 8B FP8 without the head with Kahan weights, so fp8_speedup_8b pairs Kahan with Kahan.
# One tarball; the rows go through `gpu_frontier.py summarize` with the earlier JSON.
set -u
R=/tmp/r17; NAME=call17
# shellcheck source=lib.sh
source benchmarks/gpu_calls/lib.sh
P="--preset 125m --seq-len 2048 --steps 20 --warmup 8 --fused-loss"
kiln 125m-mb64-noFSDP 80 $P --micro-batch-size 64 --parallel none
kiln 125m-mb96-noFSDP 80 $P --micro-batch-size 96 --parallel none
kiln 125m-mb64-noFSDP-c32k 80 $P --micro-batch-size 64 --parallel none --fused-loss-chunk 32768
E8="--preset llama3.1-8b --seq-len 4096 --steps 10 --warmup 4 --fused-loss --param-dtype bfloat16 --bf16-update kahan --precision fp8-tensorwise"
kiln 8b-kahan-fp8-mb2 120 $E8 --micro-batch-size 2
kiln 8b-kahan-fp8head-mb2 120 $E8 --micro-batch-size 2 --fp8-head
kiln 8b-kahan-fp8head-mb1 110 $E8 --micro-batch-size 1 --fp8-head
echo "=== done $(date +%T)" >> $LOG; pack
