#!/usr/bin/env bash
# One device call's batch of GPU work: CUDA tests, then Kiln and torchtitan throughput side by side.
#
#   bash benchmarks/gpu_bench.sh ceiling kiln:125m:16 tt:125m:16:compile "tt:1b:8:compile:--float8 rowwise"
#
# Jobs: `tests` (model + trainer tests on CUDA), `ceiling` (bf16 8192^3 matmul TFLOP/s, the day's
# practical peak), `kiln:PRESET:BATCH[:EXTRA ARGS]` (benchmarks/train_throughput.py),
# `tt:SHAPE:BATCH:compile|no-compile[:EXTRA ARGS]` (torchtitan 0.2.2 via
# benchmarks/baselines/torchtitan_runner.py; EXTRA e.g. `--float8 rowwise --activation-checkpoint
# selective --seq-len 4096`), `lit:SHAPE:BATCH:compile|no-compile[:EXTRA]` (LitGPT),
# `ckpt:PRESET:BATCH[:EXTRA ARGS]` (benchmarks/checkpoint_stall.py: checkpoint stall, save GB/s). Wheels in .whl/
# (carried) are installed first. Each job's JSON is written as it finishes; at the end they are
# merged into $OUT/results.json, summarized into $OUT/gpu_frontier.json (benchmarks/gpu_frontier.py)
# and the logs joined into $OUT/logs.txt (the device tool returns at most 8 files).
set -u
OUTDIR=${OUT:-/tmp/kiln-bench}
WORK=$OUTDIR/work
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
slug() { printf '%s' "$*" | tr -cs 'A-Za-z0-9' '_' | sed 's/^_//; s/_$//'; }
for job in "$@"; do
  IFS=: read -r kind a b c d <<< "$job"
  echo "=== $job ($(date +%T))"
  case $kind in
    ceiling)
      timeout 120 python3 benchmarks/gpu_frontier.py ceiling --out "$WORK/ceiling.json" 2>&1 | tail -n 2 ;;
    tests)
      timeout 240 python3 -m pytest tests/model tests/trainer -q -m "not slow" -p no:cacheprovider \
        --ignore=tests/trainer/test_sft.py --ignore=tests/trainer/test_dpo.py --ignore=tests/model/test_hf_interop.py 2>&1 | tail -n 12 ;;
    kiln)
      n=$(slug "kiln_${a}_${b}_${c:-}")
      # shellcheck disable=SC2086  # $c holds extra flags
      timeout "${TMO:-300}" python3 benchmarks/train_throughput.py --preset "$a" --seq-len 2048 \
        --micro-batch-size "$b" --steps 20 --warmup 8 ${c:-} --out "$WORK/$n.json" > "$WORK/$n.log" 2>&1
      echo "rc=$?"; tail -n 8 "$WORK/$n.log" ;;
    tt)
      n=$(slug "tt_${a}_${b}_${c}_${d:-}")
      # shellcheck disable=SC2086  # $d holds extra flags; later flags (--seq-len ...) win
      timeout "${TMO:-300}" torchrun --standalone --nproc-per-node 1 benchmarks/baselines/torchtitan_runner.py \
        --shape "$a" --batch-size "$b" "--$c" --steps 20 --warmup 8 --seq-len 2048 ${d:-} \
        --out "$WORK/$n.json" > "$WORK/$n.log" 2>&1
      echo "rc=$?"; grep -E "Error|error" "$WORK/$n.log" | tail -n 3; tail -n 1 "$WORK/$n.log" ;;
    lit)
      [ -d /tmp/site-lit ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/site-lit .whl/litgpt/*.whl
      PYTHONPATH=/tmp/site-lit:${PYTHONPATH:-} timeout "${TMO:-300}" python3 benchmarks/baselines/litgpt_runner.py \
        --shape "$a" --batch-size "$b" "--$c" ${d:-} --steps 20 --warmup 8 --seq-len 2048 \
        --out "$WORK/lit_${a}_${b}_${c}.json" > "$WORK/lit_${a}_${b}_${c}.log" 2>&1
      echo "rc=$?"; grep -E "Error|error" "$WORK/lit_${a}_${b}_${c}.log" | tail -n 3; tail -n 2 "$WORK/lit_${a}_${b}_${c}.log" ;;
    ckpt)
      # shellcheck disable=SC2086  # $c holds extra flags (e.g. --compile --modes async)
      timeout "${TMO:-540}" python3 benchmarks/checkpoint_stall.py --preset "$a" --micro-batch-size "$b" ${c:-} \
        --out "$WORK/ckpt_${a}_${b}.json" > "$WORK/ckpt_${a}_${b}.log" 2>&1
      echo "rc=$?"; grep -E "^\{|Error" "$WORK/ckpt_${a}_${b}.log" | tail -n 4 ;;
    *) echo "unknown job $job" ;;
  esac
  # the summary so far, so that a batch cut off by the time limit still leaves it
  python3 benchmarks/gpu_frontier.py summarize "$WORK" --out "$OUTDIR/gpu_frontier.json" > /dev/null 2>&1
done
python3 - "$WORK" "$OUTDIR/results.json" <<'PY'
import json, pathlib, sys
work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
rows = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json"))}
out.write_text(json.dumps(rows, indent=1))
PY
python3 benchmarks/gpu_frontier.py summarize "$WORK" --out "$OUTDIR/gpu_frontier.json"
cat "$WORK"/*.log > "$OUTDIR/logs.txt" 2>/dev/null
rm -rf "$WORK"
