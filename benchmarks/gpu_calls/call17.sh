#!/usr/bin/env bash
# GPU call 17: what is left of issue 16 on one GPU.
# - 125M (the one missed goal, 48.8 % MFU): where its device idles (the profile's new gap table), how much
#   of the idle is the per-step synchronize of the timing loop (the new pipelined rate: the trainer does not
#   synchronize between steps), and without FSDP on its 1-rank mesh (autocast instead of FSDP's bf16 params:
#   no per-block all-gather copies and hooks), also with 32768-token loss chunks (4 a step instead of 16).
# - 8B FP8 with Kahan bf16 weights (the quality-gated recipe), without and with the FP8 head, so that
#   fp8_speedup_8b pairs Kahan with Kahan.
# One tarball; the rows go through `gpu_frontier.py summarize` with the earlier JSON.
# Result (12-04): 125M 533,260 tok/s FSDP (550,527 back to back), 518,811 without FSDP (531,005 with 32k chunks);
#   8B Kahan FP8 mb2 10,442, + head 10,146, + head mb1 9,810.
set -u
R=/tmp/r17; NAME=call17
# shellcheck source=lib.sh
source benchmarks/gpu_calls/lib.sh
P="--preset 125m --seq-len 2048 --steps 20 --warmup 8 --fused-loss --micro-batch-size 64"
kiln 125m-mb64-fsdp-prof 100 $P --profile "$R/prof-fsdp"
kiln 125m-mb64-noFSDP-prof 100 $P --parallel none --profile "$R/prof-none"
kiln 125m-mb64-noFSDP-c32k 80 $P --parallel none --fused-loss-chunk 32768
E8="--preset llama3.1-8b --seq-len 4096 --steps 10 --warmup 4 --fused-loss --param-dtype bfloat16 --bf16-update kahan --precision fp8-tensorwise"
kiln 8b-kahan-fp8-mb2 120 $E8 --micro-batch-size 2
kiln 8b-kahan-fp8head-mb2 120 $E8 --micro-batch-size 2 --fp8-head
kiln 8b-kahan-fp8head-mb1 110 $E8 --micro-batch-size 1 --fp8-head
echo "=== done $(date +%T)" >> $LOG; pack
