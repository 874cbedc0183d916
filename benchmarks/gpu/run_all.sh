#!/usr/bin/env bash
# Every GPU check of issue 16 in one command, each part under its own time limit (total <= ~9 minutes):
#
#   bash benchmarks/gpu/run_all.sh OUTDIR
#
# 1. env      : nvidia-smi, torch/CUDA/Lightning versions (into tests.log)
# 2. tests    : every test file that needs CUDA (the fixed list below plus what `grep` finds), all their tests,
#               with per-test results (cuda_tests.xml, tests.log; -rA lists passes, skips and failures)
# 3. bench    : benchmarks/gpu_bench.py --only loops (bench.log, bench.json)
# 4. curves   : benchmarks/gpu_bench.py --only curves: torch.compile and fsdp loss curves (curves.log, curves.json)
# 5. summary.md: the device, each part's exit status and time, every test's outcome, the tables.
#
# Afterwards, on any machine: put the table into docs/benchmarks.md with
#   .venv/bin/python benchmarks/gpu_bench.py --from-json OUTDIR/bench.json --docs docs/benchmarks.md
#
# Python: $PYTHON if set; else .venv/bin/python when its torch sees a GPU; else python3 (a GPU machine's own
# PyTorch). src/ goes first on PYTHONPATH, so fulmen needs no install. Limits (seconds): TESTS_S, BENCH_S,
# CURVES_S; ROUNDS: timed benchmark rounds. Files in OUTDIR: at most 7, no folders (what a device run returns).
set -u
OUT=${1:?usage: bash benchmarks/gpu/run_all.sh OUTDIR}
cd "$(dirname "$0")/../.." || exit 2
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TESTS_S=${TESTS_S:-200}
BENCH_S=${BENCH_S:-240}
CURVES_S=${CURVES_S:-100}
ROUNDS=${ROUNDS:-2}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONHASHSEED=0
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
        PYTHON=.venv/bin/python
    else
        PYTHON=python3
    fi
fi
WORK=$(mktemp -d)
PARTS="$WORK/parts.md"
: >"$PARTS"

part() {  # part NAME LIMIT LOG COMMAND...
    local name=$1 limit=$2 log=$3 start rc
    shift 3
    start=$(date +%s)
    echo "== $name (limit ${limit}s): $*" | tee -a "$log"
    timeout -k 10 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && rc="$rc (time limit)"
    echo "| $name | $rc | $(( $(date +%s) - start )) s |" >>"$PARTS"
    echo "   -> exit $rc"
}

# 1. env
{
    date -u
    nvidia-smi 2>&1 | head -20
    "$PYTHON" - <<'PY'
import sys, torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported(), "count", torch.cuda.device_count())
try:
    from importlib.metadata import version
    print("pytorch-lightning", version("pytorch_lightning"))
except Exception as exc:
    print("pytorch-lightning: not installed", exc)
import fulmen
print("fulmen from", fulmen.__file__)
PY
} >"$OUT/tests.log" 2>&1

# 2. tests: the files that need CUDA (test_deferred_read: the pinned copy + event under sync-debug mode)
FILES="tests/strategies/test_gpu.py tests/performance/test_hot_path.py tests/performance/test_deferred_read.py
tests/checkpoint/test_async_checkpoint_io.py tests/strategies/test_dp.py"
FOUND=$(grep -rlE 'cuda\.is_available\(\)|cuda\.device_count\(\)|accelerator="(cuda|gpu)"' tests --include='test_*.py' | sort)
FILES=$(printf '%s\n' $FILES $FOUND | sort -u | tr '\n' ' ')
part tests "$TESTS_S" "$OUT/tests.log" "$PYTHON" -m pytest $FILES -p no:cacheprovider -v -rA \
    --junitxml="$OUT/cuda_tests.xml"

# 3. benchmark loops, 4. loss curves
part bench "$BENCH_S" "$OUT/bench.log" "$PYTHON" benchmarks/gpu_bench.py --out "$WORK/bench" --only loops --rounds "$ROUNDS"
cp "$WORK/bench/gpu_bench.json" "$OUT/bench.json" 2>/dev/null
part curves "$CURVES_S" "$OUT/curves.log" "$PYTHON" benchmarks/gpu_bench.py --out "$WORK/curves" --only curves
cp "$WORK/curves/gpu_bench.json" "$OUT/curves.json" 2>/dev/null

# 5. summary
{
    echo "# GPU checks ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    grep -E '^(torch|device|pytorch-lightning|python) ' "$OUT/tests.log" | sed 's/^/    /'
    echo
    echo "| part | exit | time |"
    echo "|---|---|---|"
    cat "$PARTS"
    echo
    echo "## Tests (files: $FILES)"
    echo
    "$PYTHON" - "$OUT/cuda_tests.xml" <<'PY'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception as exc:
    print(f"no test report ({exc})")
    raise SystemExit
counts = {}
for case in root.iter("testcase"):
    outcome, why = "passed", ""
    for tag in ("failure", "error", "skipped"):
        node = case.find(tag)
        if node is not None:
            outcome, why = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag], node.get("message", "")
    counts[outcome] = counts.get(outcome, 0) + 1
    name = f"{case.get('classname')}::{case.get('name')}"
    if outcome != "passed" or "cuda" in name.lower() or "gpu" in name.lower():
        print(f"- {outcome}: {name}" + (f" ({why[:200]})" if why else ""))
print()
print("Totals:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
PY
    echo
    for part in bench curves; do
        echo "## $part"
        echo
        if [ -f "$OUT/$part.json" ]; then
            "$PYTHON" benchmarks/gpu_bench.py --from-json "$OUT/$part.json"
        else
            echo "no results (see $part.log)"
        fi
        echo
    done
} >"$OUT/summary.md" 2>&1
rm -rf "$WORK"
cat "$OUT/summary.md"
