#!/usr/bin/env bash
# GPU call 11 (2026-12-03): Kiln's best 1B with every block linear in FP8 and with max-autotune, at the fused-loss
# chunk that call 10 found faster (read from /tmp/r10 when the machine is still the same, else 8192); 125M at
# micro-batch 128 and with max-autotune; the fused loss's CUDA test. One tarball.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
R=/tmp/r11; mkdir -p $R; LOG=$R/call11.log; START=$(date +%s); BUDGET=${BUDGET:-560}
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
pack() { tar -C $R -cf $OUT/r11.tar .; }
kiln() { name=$1; t=$2; shift 2; l=$(left); [ "$t" -gt "$l" ] && t=$l; [ "$t" -lt 40 ] && { echo "skip $name" >> $LOG; return 1; }
  echo "=== $name $(date +%T) (limit $t s)" >> $LOG
  timeout $t python3 benchmarks/train_throughput.py --compile on --vocab-sizes none "$@" --out $R/$name.json > $R/$name.log 2>&1
  rc=$?; echo "rc=$rc" >> $LOG; grep -E "tok/s|Error|error" $R/$name.log | tail -n 3 >> $LOG; pack; return $rc; }
CHUNK=$(python3 - <<'PY'
import json, pathlib
best = (0.0, 8192)
for c in (8192, 16384):
    p = pathlib.Path(f"/tmp/r10/1b-best-chunk{c}.json")
    if p.exists():
        r = json.loads(p.read_text())["results"][0]
        if "error" not in r:
            best = max(best, (r["tokens_per_s"], c))
print(best[1])
PY
)
echo "chunk $CHUNK" >> $LOG
B="--preset 1b --seq-len 2048 --steps 20 --warmup 8 --fused-loss --micro-batch-size 32 --untied-head --precision fp8-tensorwise --param-dtype bfloat16 --fused-loss-chunk $CHUNK"
kiln 1b-best-c$CHUNK-filterall 85 $B --fp8-filter all
P="--preset 125m --seq-len 2048 --steps 20 --warmup 8 --fused-loss"
kiln 125m-mb128-fused 75 $P --micro-batch-size 128
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/model/test_fused_loss.py 2>&1 | grep -E "^E|passed|failed|Error" | head -n 12 >> $LOG; pack
kiln 1b-best-c$CHUNK-autotune 200 $B --compile-mode max-autotune-no-cudagraphs
kiln 125m-mb64-fused-autotune 200 $P --micro-batch-size 64 --compile-mode max-autotune-no-cudagraphs
echo "=== done $(date +%T)" >> $LOG; pack
