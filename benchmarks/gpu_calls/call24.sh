#!/usr/bin/env bash
# GPU call 24 (2026-12-04, fourth session; no carry: the wheels and .devdata of earlier sessions were lost with
# their checkout, and nothing here needs them: torch, triton and pytest are on the machine). Call 23 ran the
# tiled kernel, but its results never came back to a checkout. The session had ~400 s of device time left, a
# machine start included, so this call does
# only what is needed to know whether the tiled kernel (on by default on CUDA) works and pays: its CUDA tests
# with the fused loss's, its speed at 125M's head shape against Inductor's pass, and 125M rows (two).
set -u
R=/tmp/r24; NAME=call24; BUDGET=${BUDGET:-230}
# shellcheck source=lib.sh
source benchmarks/gpu_calls/lib.sh
echo "=== cuda tests $(date +%T)" >> $LOG
timeout 70 python3 -m pytest -q -p no:cacheprovider tests/model/test_softmax_xent.py tests/model/test_fused_loss.py \
  -k "xent or cuda or applies or ignored" 2>&1 | grep -E "^E |passed|failed" | head -n 12 >> $LOG; pack
echo "=== softmax_xent_speed 125m $(date +%T)" >> $LOG
timeout 60 python3 benchmarks/softmax_xent_speed.py --out $R/softmax_xent_speed.json > $R/softmax_xent_speed.log 2>&1
echo "rc=$?" >> $LOG; grep -E "ms, loss|speedup|chunk_pass|Error" $R/softmax_xent_speed.log | head -n 8 >> $LOG; pack
P="--preset 125m --seq-len 2048 --steps 20 --warmup 8 --fused-loss --micro-batch-size 64"
kiln 125m-mb64-xent2 75 $P
kiln 125m-mb64-xent2-2 60 $P
echo "=== done $(date +%T)" >> $LOG; pack
