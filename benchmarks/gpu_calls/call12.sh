#!/usr/bin/env bash
# GPU call 12 (2026-12-03, the session's last device minutes): the CUDA tests of the bf16-weights optimizer and
# of compiled bf16 training, Kahan included. Result: 4 passed, 1 failed -- the compiled Kahan update differed
# from the eager CPU one in 26 % of the weights after 3 steps (inductor dropped the .to(bf16).float() round
# trip the residual needs); fixed by rounding on the bits (`trainer.optim.round_bf16_nearest`), the fix checked
# by a CPU-inductor test that reproduces the 26 %, not yet on the GPU.
timeout 130 python3 -m pytest -q -p no:cacheprovider tests/trainer/test_optim.py tests/trainer/test_pretrain_loop.py -k "cuda" 2>&1 | grep -E "^E |passed|failed|error|SKIP" | head -n 20
