#!/usr/bin/env bash
# Broker benchmarks: the criterion suite (benches/broker.rs) and the Session
# load generator (examples/broker_load.rs), then one summary table.
#
#   scripts/bench-broker.sh                  # everything, ~3 min after the build
#   SECONDS_PER_RUN=10 scripts/bench-broker.sh
#   scripts/bench-broker.sh --skip-criterion # load generator only
#
# Runs:
#   1. cargo bench --bench broker (built with --no-run, then the binary run
#      directly, from the repository root as cargo would): unpinned, all groups
#   2. taskset -c 0 <that binary> --bench session_round_trip (same-core round trip)
#   3. broker_load --streams 1, pinned (taskset -c 0) and unpinned, batched
#   4. broker_load --streams 16, batched and strict (decision memo off: every
#      request evaluated), then batched with the memo on (every request a hit)
# Raw output goes to target/bench-broker/<UTC timestamp>/. Needs python3 (to
# read criterion's estimates.json) and taskset (util-linux).
# The numbers depend heavily on what else the machine is doing: keep it idle,
# and compare medians and ratios, not single figures.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${SECONDS_PER_RUN:-5}
STREAMS=${STREAMS:-16}
PIN_CPU=${PIN_CPU:-0}
SKIP_CRITERION=0
for arg in "$@"; do
    case $arg in
        --skip-criterion) SKIP_CRITERION=1 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "bench-broker.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done
command -v taskset >/dev/null || { echo "bench-broker.sh: taskset not found (util-linux)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "bench-broker.sh: python3 not found" >&2; exit 2; }

export CRITERION_HOME="$ROOT/target/criterion"
OUT="$ROOT/target/bench-broker/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    echo "kernel: $(uname -r)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "rustc: $(rustc --version)"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt"

echo "== building (release/bench profile)"
build_failed() { echo "bench-broker.sh: build failed, see $OUT/build.log" >&2; exit 1; }
cargo bench --bench broker --no-run > "$OUT/build.log" 2>&1 || build_failed
cargo build --release --example broker_load >> "$OUT/build.log" 2>&1 || build_failed
LOAD="$ROOT/target/release/examples/broker_load"
# The bench binary cargo just built: "Executable benches/broker.rs (target/release/deps/broker-HASH)".
BENCH_BIN=$ROOT/$(sed -n 's/.*Executable benches\/broker.rs (\(.*\))$/\1/p' "$OUT/build.log" | tail -n1)
[ -x "$BENCH_BIN" ] && [ -x "$LOAD" ] || build_failed
echo "bench: $BENCH_BIN"
echo "load generator: $LOAD"

# Prints "name<TAB>median_us<TAB>mean_us" for every criterion result under target/criterion.
criterion_medians() {
    python3 - "$CRITERION_HOME" <<'EOF'
import json, os, sys
root = sys.argv[1]
for dirpath, _, files in sorted(os.walk(root)):
    if os.path.basename(dirpath) == "new" and "estimates.json" in files:
        with open(os.path.join(dirpath, "estimates.json")) as f:
            e = json.load(f)
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            name = json.load(f)["full_id"]
        print(f"{name}\t{e['median']['point_estimate'] / 1000:.1f}\t{e['mean']['point_estimate'] / 1000:.1f}")
EOF
}

if [ "$SKIP_CRITERION" = 0 ]; then
    echo "== criterion, unpinned"
    # Same binary cargo bench would run; run directly so nothing is rebuilt
    # between the unpinned and the pinned run.
    "$BENCH_BIN" --bench > "$OUT/criterion.log" 2>&1 || { cat "$OUT/criterion.log"; exit 1; }
    grep -E '^[a-z_]+/|time:' "$OUT/criterion.log" || true
    echo "== criterion session round trip, pinned to CPU $PIN_CPU"
    taskset -c "$PIN_CPU" "$BENCH_BIN" --bench session_round_trip > "$OUT/criterion-pinned.log" 2>&1 \
        || { cat "$OUT/criterion-pinned.log"; exit 1; }
    grep -E '^[a-z_]+/|time:' "$OUT/criterion-pinned.log" || true
    criterion_medians > "$OUT/criterion.tsv"
fi

# run_load LABEL [taskset args --] broker_load args...
run_load() {
    local label=$1; shift
    echo "== load: $label"
    "$@" 2>&1 | tee "$OUT/load-${label// /_}.log"
    local line
    line=$(grep '^RESULT' "$OUT/load-${label// /_}.log" | tail -n1 || true)
    printf '%s\t%s\n' "$label" "${line:-RESULT failed}" >> "$OUT/load.tsv"
}
: > "$OUT/load.tsv"
run_load "1 stream batched, pinned cpu $PIN_CPU" taskset -c "$PIN_CPU" "$LOAD" --streams 1 --seconds "$SECS" --durability batched
run_load "1 stream batched, unpinned" "$LOAD" --streams 1 --seconds "$SECS" --durability batched
run_load "$STREAMS streams batched" "$LOAD" --streams "$STREAMS" --seconds "$SECS" --durability batched
run_load "$STREAMS streams strict" "$LOAD" --streams "$STREAMS" --seconds "$SECS" --durability strict
# Every stream repeats one input: with the decision memo on, all but the first are hits.
run_load "$STREAMS streams batched, memo hits" "$LOAD" --streams "$STREAMS" --seconds "$SECS" --durability batched --memo 4096
run_load "1 stream batched, memo hits, pinned cpu $PIN_CPU" taskset -c "$PIN_CPU" "$LOAD" --streams 1 --seconds "$SECS" --durability batched --memo 4096

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
echo
echo "== summary ($OUT)"
if [ -s "$OUT/criterion.tsv" ] 2>/dev/null; then
    printf '%-58s %12s %12s\n' "criterion bench" "median µs" "mean µs"
    while IFS=$'\t' read -r name median mean; do
        printf '%-58s %12s %12s\n' "$name" "$median" "$mean"
    done < "$OUT/criterion.tsv"
    echo
fi
printf '%-36s %12s %10s %10s %8s\n' "load generator (Session, Unix socket)" "decisions/s" "p50 µs" "p99 µs" "errors"
while IFS=$'\t' read -r label result; do
    rate=$(sed -n 's/.* rate=\([^ ]*\).*/\1/p' <<<"$result")
    p50=$(sed -n 's/.* p50_us=\([^ ]*\).*/\1/p' <<<"$result")
    p99=$(sed -n 's/.* p99_us=\([^ ]*\).*/\1/p' <<<"$result")
    errs=$(sed -n 's/.* errors=\([^ ]*\).*/\1/p' <<<"$result")
    printf '%-36s %12s %10s %10s %8s\n' "$label" "${rate:-?}" "${p50:-?}" "${p99:-?}" "${errs:-?}"
done < "$OUT/load.tsv"
