#!/usr/bin/env bash
# GPU call 21 (planned for the next session with device time; carry .whl and .devdata).
# - The CUDA tests written after call 20: a strided batch reaches the GPU by a pinned, asynchronous copy
#   (`trainer.data.to_device`), and the one-rank reduce policy reaches FSDP with bitwise the same gradients.
# - The FP8 head with Kahan bf16 weights together in the 1000-step quality run (each passed alone: +0.20 %
#   and +0.50 % against the median of three bf16 runs); the 8B FP8 figure's row combines them.
# - 125M without FSDP on Kahan weights again (the trainer path now copies pinned batches) and the 8B Kahan
#   bf16 / FP8 rows without FSDP repeated, for their spread.
set -u
R=/tmp/r21; NAME=call21
# shellcheck source=lib.sh
source benchmarks/gpu_calls/lib.sh
mkdir -p $R/q
echo "=== cuda tests $(date +%T)" >> $LOG
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/trainer/test_loader.py tests/trainer/test_distributed.py \
  -k "to_device or reduce" 2>&1 | grep -E "^E |passed|failed" | head -n 8 >> $LOG; pack
( while sleep 20; do cp $R/q/run-*/metrics.jsonl $R/q/ 2>/dev/null; pack; done ) & SAVER=$!
timeout 210 python3 benchmarks/fp8_quality.py run --tokens .devdata/tokens --out $R/q --steps 1000 \
  --precisions "fp8head-kahan=fp8-tensorwise,run.fp8_filter=all,run.fused_loss=true,run.fp8_head=true,run.param_dtype=bfloat16,optim.bf16_update=kahan" \
  --preset 1b --micro-batch 2 --seq-len 2048 --vocab-size 32000 >> $LOG 2>&1
echo "quality rc=$?" >> $LOG; kill $SAVER; cp $R/q/run-*/metrics.jsonl $R/q/ 2>/dev/null; pack
E8="--preset llama3.1-8b --seq-len 4096 --steps 10 --warmup 4 --fused-loss --param-dtype bfloat16 --bf16-update kahan --micro-batch-size 2 --parallel none"
kiln 8b-kahan-bf16-mb2-none 80 $E8
kiln 8b-kahan-fp8head-mb2-none 80 $E8 --precision fp8-tensorwise --fp8-head
kiln 125m-mb64-kahan-none 60 --preset 125m --seq-len 2048 --steps 20 --warmup 8 --fused-loss --micro-batch-size 64 --param-dtype bfloat16 --bf16-update kahan --parallel none
echo "=== done $(date +%T)" >> $LOG; pack
