#!/usr/bin/env bash
# GPU call 20 (the session's last ~450 s of device time). Call 18's 8B profile also gave FSDP's own copies on
# its 1-rank mesh ~13 % of the kernel time (aten::copy_ and chunk_cat: ~76 ms of a 0.8 s step) and its buffers a share of the memory behind the allocator retries. With bf16 weights there
# is nothing for FSDP to cast, so `--parallel none` (plain tensors, autocast a no-op for the matmuls) drops
# all of it: the 8B Kahan rows (bf16, FP8, FP8 + head) and 125M with Kahan weights, without FSDP.
# Result: no retries; 8B Kahan bf16 11,468 (59.7 %), FP8 14,914, FP8 + head 15,122; 125M Kahan no FSDP 546,385.
set -u
R=/tmp/r20; NAME=call20; BUDGET=300
# shellcheck source=lib.sh
source benchmarks/gpu_calls/lib.sh
E8="--preset llama3.1-8b --seq-len 4096 --steps 10 --warmup 4 --fused-loss --param-dtype bfloat16 --bf16-update kahan --micro-batch-size 2 --parallel none"
kiln 8b-kahan-bf16-mb2-none 80 $E8
kiln 8b-kahan-fp8head-mb2-none 80 $E8 --precision fp8-tensorwise --fp8-head
kiln 8b-kahan-fp8-mb2-none 80 $E8 --precision fp8-tensorwise
kiln 125m-mb64-kahan-none 60 --preset 125m --seq-len 2048 --steps 20 --warmup 8 --fused-loss --micro-batch-size 64 --param-dtype bfloat16 --bf16-update kahan --parallel none
echo "=== done $(date +%T)" >> $LOG; pack
