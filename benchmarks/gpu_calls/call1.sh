#!/usr/bin/env bash
# GPU call 1: CUDA tests for FP8 / fused loss, the matmul ceiling, Kiln 1B rows.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
LOG=$OUT/call1.log
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  python3 -c "import torch, torchao; print('torch', torch.__version__, 'torchao', torchao.__version__, torch.cuda.get_device_name())"
  python3 - <<'PY'
import torch, time
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(5): a @ b
torch.cuda.synchronize(); t = time.perf_counter(); n = 50
for _ in range(n): a @ b
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / n
print(f"ceiling bf16 matmul 8192^3: {2 * 8192**3 / dt / 1e12:.1f} TFLOP/s")
PY
} > $LOG 2>&1
echo "=== tests $(date +%T)" >> $LOG
timeout 200 python3 -m pytest tests/trainer/test_float8.py tests/model/test_fused_loss.py -q -n 0 -p no:cacheprovider -x >> $LOG 2>&1
echo "tests rc=$?" >> $LOG
row() { name=$1; shift; echo "=== $name $(date +%T)" >> $LOG
  timeout 150 python3 benchmarks/train_throughput.py --preset 1b --seq-len 2048 --compile on --steps 20 --warmup 8 --vocab-sizes none "$@" --out $OUT/$name.json > /tmp/$name.log 2>&1
  echo "rc=$?" >> $LOG; grep -E "tok/s|tokens_per_s|Error|error" /tmp/$name.log | tail -n 4 >> $LOG; }
row 1b-bf16-mb8 --micro-batch-size 8
row 1b-fp8t-mb8 --micro-batch-size 8 --precision fp8-tensorwise
row 1b-fp8r-mb8 --micro-batch-size 8 --precision fp8-rowwise
row 1b-fp8t-fused-mb16 --micro-batch-size 16 --precision fp8-tensorwise --fused-loss
row 1b-bf16-untied-mb8 --micro-batch-size 8 --untied-head
row 1b-fp8r-all-mb8 --micro-batch-size 8 --precision fp8-rowwise --fp8-filter all
echo "=== done $(date +%T)" >> $LOG
