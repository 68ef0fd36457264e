#!/usr/bin/env bash
# GPU call 27 (2026-12-04, fifth session; carry .whl: torchtitan 0.2.2 with what it needs, and torchao): torchtitan's
# own float8 path at 8B, the FP8-with-FP8 comparison the issue asks for where it runs (at 1B it ran: 69,671 tok/s).
# The same single-GPU configuration as its bf16 row (micro-batch 1, seq 4096, compile, selective per-op AC);
# full recompute if that does not fit. Result: selective AC fit, 8,579 tok/s (44.6 %), peak 132.8 GB.
set -u
R=/tmp/r27; NAME=call27; BUDGET=${BUDGET:-470}
# shellcheck source=lib.sh
source benchmarks/gpu_calls/lib.sh
# tt NAME LIMIT ARGS...: one torchtitan 8B float8 row, skipped under 60 s
tt() { local name=$1 t=$2; shift 2
  row "$name" "$t" 60 "tok/s|Error|error|memory" torchrun --standalone --nproc-per-node 1 \
    benchmarks/baselines/torchtitan_runner.py --compile --shape 8b --batch-size 1 --seq-len 4096 --steps 10 --warmup 4 \
    --float8 tensorwise "$@" --out "$R/$name.json"; }
tt tt-8b-fp8t-selective 260 --activation-checkpoint selective --selective-ac-option op \
  || tt tt-8b-fp8t-full 200 --activation-checkpoint full
echo "=== done $(date +%T)" >> $LOG; pack
