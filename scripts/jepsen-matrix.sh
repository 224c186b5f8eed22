#!/usr/bin/env bash
# Runs jepsen-lite's workloads under every nemesis on 3 and 5 nodes with linearizable reads, plus the negative
# controls (stale reads on the register, lease reads on a slow-clocked leader, blind writes on the bank, lock
# holders stalled past their lease), and prints one table of verdicts. Each run's history, results and report
# stay under OUT.
#
#   scripts/jepsen-matrix.sh                 # 30 s per run, seed 1, release build, every workload
#   TIME=60s SEED=7 scripts/jepsen-matrix.sh
#   WORKLOADS="bank lock" NODES=3 scripts/jepsen-matrix.sh
#   PROFILE=debug scripts/jepsen-matrix.sh   # use target/debug binaries (no release build)
#
# Exit 0 when every linearizable run passed and every control was flagged; 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

TIME=${TIME:-30s}
SEED=${SEED:-1}
INTERVAL=${INTERVAL:-5s}
OUT=${OUT:-jepsen-out/matrix}
PROFILE=${PROFILE:-release}
NEMESES=${NEMESES:-"partition-halves partition-leader partition-ring bridge kill pause latency clock all"}
NODES=${NODES:-"3 5"}
WORKLOADS=${WORKLOADS:-"register set bank lock watch"}

if [[ "$PROFILE" == release ]]; then
  cargo build --release -q -p raftkv-server -p jepsen-lite
fi
BIN="target/$PROFILE/jepsen-lite"
[[ -x "$BIN" ]] || { echo "$BIN is missing: build it (cargo build -p jepsen-lite -p raftkv-server)" >&2; exit 2; }

mkdir -p "$OUT"
failures=0
printf '%-9s %-6s %-26s %-13s %-9s %-12s %-6s %s\n' workload nodes nemesis reads exit verdict ops "workload check · split-brain · liveness"
row() {
  local workload=$1 nodes=$2 nemesis=$3 reads=$4 dir=$5 code=$6
  python3 - "$dir/results.json" "$workload" "$nodes" "$nemesis" "$reads" "$code" <<'EOF'
import json, sys
path, workload, nodes, nemesis, reads, code = sys.argv[1:]
try:
    r = json.load(open(path))
except OSError:
    print(f"{workload:<9} {nodes:<6} {nemesis:<26} {reads:<13} {code:<9} harness-failed")
    sys.exit()
c = r["checks"]
main = next(c[name] for name in ("linearizable", "set", "bank", "lock", "watch") if name in c)
print(f"{workload:<9} {nodes:<6} {nemesis:<26} {reads:<13} {code:<9} {r['verdict']:<12} {c['summary']['operations']:<6} "
      f"{main['verdict']} · {c['split_brain']['verdict']} · {r['liveness']['verdict']} ({r['liveness']['summary']})")
EOF
}

for workload in $WORKLOADS; do
  for nodes in $NODES; do
    for nemesis in $NEMESES; do
      dir="$OUT/$workload-$nodes-$nemesis"
      code=0
      "$BIN" run --workload "$workload" --nodes "$nodes" --nemesis "$nemesis" --time-limit "$TIME" \
        --nemesis-interval "$INTERVAL" --seed "$SEED" --out "$dir" >"$dir.log" 2>&1 || code=$?
      row "$workload" "$nodes" "$nemesis" linearizable "$dir" "$code"
      [[ $code -eq 0 ]] || failures=$((failures + 1))
    done
  done
done

# Negative controls, each of which must be flagged (exit 1) while the split-brain check passes: stale reads
# under partitions on the register; lease reads on a leader whose clock runs at a quarter of real time, cut off
# (the server's default timing: the slow lease then outlasts the majority's election by seconds); blind writes
# (no compare) with stale reads on the bank; lock holders stalled past their lease (the holds overlap, the
# fenced writes stay in order).
# Whether an anomaly shows up at all is up to timing (a stale read needs a read in the stale window), so a
# control that was not flagged is run once more, with the next seed, before it counts as a failure.
CONTROL_ATTEMPTS=2
control() { # workload name reads arguments...
  local workload=$1 name=$2 reads=$3
  shift 3
  local dir="$OUT/$workload-3-$name-control" code=0 attempt
  for attempt in $(seq 1 "$CONTROL_ATTEMPTS"); do
    code=0
    # Each attempt's results alone: a harness failure must not leave the previous attempt's to be shown.
    rm -f "$dir/results.json"
    "$BIN" run --workload "$workload" --nodes 3 --time-limit "$TIME" --nemesis-interval "$INTERVAL" \
      --seed "$((SEED + attempt - 1))" --out "$dir" "$@" >"$dir.log" 2>&1 || code=$?
    [[ $code -eq 1 ]] && break
  done
  # The row names the seed when the run shown is not the first (its results are in the same directory).
  local label=$name
  [[ $attempt -gt 1 ]] && label="$name (seed $((SEED + attempt - 1)))"
  row "$workload" 3 "$label" "$reads" "$dir" "$code"
  [[ $code -eq 1 ]] || failures=$((failures + 1))
}
if [[ " $WORKLOADS " == *" register "* ]]; then
  control register partition-halves stale --nemesis partition-halves --read-consistency stale
  control register clock lease --nemesis clock --read-consistency lease --server-defaults \
    --nemesis-interval 10s --time-limit 30s --concurrency 6 --rate 200 --keys 2
fi
if [[ " $WORKLOADS " == *" bank "* ]]; then
  control bank blind-writes stale --nemesis none --read-consistency stale --bank-blind-writes \
    --concurrency 8 --rate 400 --keys 2
fi
if [[ " $WORKLOADS " == *" lock "* ]]; then
  control lock holder-pause linearizable --nemesis none --lock-holder-pause --concurrency 3
fi

echo
if [[ $failures -eq 0 ]]; then
  echo "every linearizable run passed and every control was flagged; reports under $OUT/*/report.html"
else
  echo "$failures run(s) did not end as expected; see $OUT/*.log and $OUT/*/results.json"
  exit 1
fi
