#!/usr/bin/env bash
# GPU call 29 (2026-12-04, fifth session; carry .whl for torchao): every test module that has CUDA-only tests, run
# whole on the GPU machine at main's state after calls 25-28 (CI runs them on CPU, where the CUDA ones skip).
# Result: cut by its 260 s limit after 110 tests, all passed (the modules' CPU tests are most of them); call 30
# then ran the CUDA-only ones alone.
set -u
R=/tmp/r29; NAME=call29; BUDGET=${BUDGET:-280}
# shellcheck source=lib.sh
source benchmarks/gpu_calls/lib.sh
echo "=== cuda test modules $(date +%T)" >> $LOG
timeout 260 python3 -m pytest -q -p no:cacheprovider -rs tests/model/test_softmax_xent.py tests/model/test_fused_loss.py \
  tests/trainer/test_loader.py tests/trainer/test_distributed.py tests/trainer/test_optim.py \
  tests/trainer/test_pretrain_loop.py tests/trainer/test_benchmark.py tests/trainer/test_float8.py \
  tests/trainer/test_async_checkpoint.py > $R/pytest.log 2>&1
echo "rc=$?" >> $LOG; grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" $R/pytest.log | tail -n 25 >> $LOG
echo "=== done $(date +%T)" >> $LOG; pack
