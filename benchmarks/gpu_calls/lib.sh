# Shared by the device calls written from call 13 on (calls 1-12 are kept as they ran, each with its own copy).
# Source it after setting R (a result folder on the device) and NAME (the call's name: $R/$NAME.log and
# $OUT/$NAME.tar); BUDGET (seconds the call may use, default 580).
# shellcheck shell=bash
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD
# the carried wheels (`.whl`), when there are any: a call that needs only the machine's own packages carries none
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
mkdir -p "$R"; LOG=$R/$NAME.log; START=$(date +%s); BUDGET=${BUDGET:-580}
# seconds left of the call's budget
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# everything in $R so far into one tarball (the device tool returns at most 8 files), run directories left out
pack() { tar --exclude='run-*' -C "$R" -cf "$OUT/$NAME.tar" .; }
# row NAME LIMIT FLOOR PATTERN CMD...: CMD (output in $R/NAME.log) cut to the budget left and skipped under FLOOR
# seconds; its exit status and last lines matching PATTERN go to $LOG, then everything is packed
row() { local name=$1 t=$2 floor=$3 pattern=$4; shift 4; local l; l=$(left); [ "$t" -gt "$l" ] && t=$l
  [ "$t" -lt "$floor" ] && { echo "skip $name" >> "$LOG"; return 1; }
  echo "=== $name $(date +%T) (limit $t s)" >> "$LOG"
  timeout "$t" "$@" > "$R/$name.log" 2>&1
  local rc=$?; echo "rc=$rc" >> "$LOG"; grep -E "$pattern" "$R/$name.log" | tail -n 4 >> "$LOG"; pack; return $rc; }
# kiln NAME LIMIT ARGS...: one train_throughput row, skipped under 40 s
kiln() { local name=$1 t=$2; shift 2
  row "$name" "$t" 40 "tok/s|Error|error" python3 benchmarks/train_throughput.py --compile on --vocab-sizes none "$@" \
    --out "$R/$name.json"; }
