#!/usr/bin/env bash
# GPU call 25 (2026-12-04, fifth session; no carry: torch, triton and pytest are on the machine). The 125M miss
# (49.7 % MFU against 50 %): what has not been measured since the Triton softmax pass cut its peak memory from
# 58 to 43 GB -- larger loss chunks (+2.3 % without FSDP in call 17) and micro-batch 128 -- and CUDA graphs
# (run.compile_mode = "reduce-overhead", new: one process, Kahan bf16 weights, the gated numerics) against the
# same configuration without them. A reference row first, since machines differ by a percent or two.
# Result: reference 563,221 tok/s (50.3 %: a faster machine than call 24's 555,809); CUDA graphs 567,745 against
# 569,707 without (no gain: reduce-overhead was then reverted, so that row no longer runs as written; the patch
# added it to run.compile_mode for run.parallel = "none" with a mark_step_begin per step); 32768-token chunks at
# micro-batch 64 563,656; micro-batch 128 573,214, with 32768-token chunks 576,476 (51.5 %).
set -u
R=/tmp/r25; NAME=call25; BUDGET=${BUDGET:-560}
# shellcheck source=lib.sh
source benchmarks/gpu_calls/lib.sh
P="--preset 125m --seq-len 2048 --steps 20 --warmup 8 --fused-loss"
K="--parallel none --param-dtype bfloat16 --bf16-update kahan"
kiln 125m-mb64-ref 75 $P --micro-batch-size 64
kiln 125m-mb64-graphs 100 $P --micro-batch-size 64 $K --compile-mode reduce-overhead
grep -iE "cudagraph|skipping" $R/125m-mb64-graphs.log | sort | uniq -c | head -n 6 >> $LOG
kiln 125m-mb64-kahan 70 $P --micro-batch-size 64 $K
kiln 125m-mb64-c32k 70 $P --micro-batch-size 64 --fused-loss-chunk 32768
kiln 125m-mb128 80 $P --micro-batch-size 128
kiln 125m-mb128-c32k 80 $P --micro-batch-size 128 --fused-loss-chunk 32768
echo "=== done $(date +%T)" >> $LOG; pack
