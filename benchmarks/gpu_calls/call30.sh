#!/usr/bin/env bash
# GPU call 30 (2026-12-04, fifth session, the last device minutes; carry .whl for torchao): only the CUDA-only tests
# of the modules call 29 ran whole (it was cut after 110 passed): those whose names or skip reasons say CUDA.
# Result: cut by its 160 s limit after 24 of the 44 selected tests, all passed; the session's device time was
# then spent.
set -u
R=/tmp/r30; NAME=call30; BUDGET=${BUDGET:-170}
# shellcheck source=lib.sh
source benchmarks/gpu_calls/lib.sh
echo "=== cuda tests $(date +%T)" >> $LOG
timeout 160 python3 -m pytest -q -p no:cacheprovider -rs -k "cuda or triton or xent or fp8 or float8" \
  tests/model/test_softmax_xent.py tests/model/test_fused_loss.py tests/trainer/test_loader.py \
  tests/trainer/test_distributed.py tests/trainer/test_optim.py tests/trainer/test_pretrain_loop.py \
  tests/trainer/test_benchmark.py tests/trainer/test_float8.py tests/trainer/test_async_checkpoint.py > $R/pytest.log 2>&1
echo "rc=$?" >> $LOG; grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" $R/pytest.log | tail -n 25 >> $LOG
echo "=== done $(date +%T)" >> $LOG; pack
