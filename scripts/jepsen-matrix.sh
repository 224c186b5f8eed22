#!/usr/bin/env bash
# Runs jepsen-lite under every nemesis on 3 and 5 nodes with linearizable reads, plus the stale-read negative
# control, and prints one table of verdicts. Each run's history, results and report stay under OUT.
#
#   scripts/jepsen-matrix.sh                 # 30 s per run, seed 1, release build
#   TIME=60s SEED=7 scripts/jepsen-matrix.sh
#   PROFILE=debug scripts/jepsen-matrix.sh   # use target/debug binaries (no release build)
#
# Exit 0 when every linearizable run passed and the stale control was flagged; 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

TIME=${TIME:-30s}
SEED=${SEED:-1}
INTERVAL=${INTERVAL:-5s}
OUT=${OUT:-jepsen-out/matrix}
PROFILE=${PROFILE:-release}
NEMESES=${NEMESES:-"partition-halves partition-leader partition-ring bridge kill pause latency all"}
NODES=${NODES:-"3 5"}

if [[ "$PROFILE" == release ]]; then
  cargo build --release -q -p raftkv-server -p jepsen-lite
fi
BIN="target/$PROFILE/jepsen-lite"
[[ -x "$BIN" ]] || { echo "$BIN is missing: build it (cargo build -p jepsen-lite -p raftkv-server)" >&2; exit 2; }

mkdir -p "$OUT"
failures=0
printf '%-6s %-18s %-13s %-9s %-12s %-6s %s\n' nodes nemesis reads exit verdict ops "linearizable/set · split-brain · liveness"
row() {
  local nodes=$1 nemesis=$2 reads=$3 dir=$4 code=$5
  python3 - "$dir/results.json" "$nodes" "$nemesis" "$reads" "$code" <<'EOF'
import json, sys
path, nodes, nemesis, reads, code = sys.argv[1:]
try:
    r = json.load(open(path))
except OSError:
    print(f"{nodes:<6} {nemesis:<18} {reads:<13} {code:<9} harness-failed")
    sys.exit()
c = r["checks"]
main = c.get("linearizable") or c.get("set")
print(f"{nodes:<6} {nemesis:<18} {reads:<13} {code:<9} {r['verdict']:<12} {c['summary']['operations']:<6} "
      f"{main['verdict']} · {c['split_brain']['verdict']} · {r['liveness']['verdict']} ({r['liveness']['summary']})")
EOF
}

for nodes in $NODES; do
  for nemesis in $NEMESES; do
    dir="$OUT/$nodes-$nemesis"
    code=0
    "$BIN" run --nodes "$nodes" --nemesis "$nemesis" --time-limit "$TIME" --nemesis-interval "$INTERVAL" \
      --seed "$SEED" --out "$dir" >"$dir.log" 2>&1 || code=$?
    row "$nodes" "$nemesis" linearizable "$dir" "$code"
    [[ $code -eq 0 ]] || failures=$((failures + 1))
  done
done

# Negative control: stale reads under partitions must be flagged by the register check (exit 1) while the
# split-brain check passes.
dir="$OUT/3-stale-control"
code=0
"$BIN" run --nodes 3 --nemesis partition-halves --read-consistency stale --time-limit "$TIME" \
  --nemesis-interval "$INTERVAL" --seed "$SEED" --out "$dir" >"$dir.log" 2>&1 || code=$?
row 3 partition-halves stale "$dir" "$code"
[[ $code -eq 1 ]] || failures=$((failures + 1))

echo
if [[ $failures -eq 0 ]]; then
  echo "every linearizable run passed and the stale control was flagged; reports under $OUT/*/report.html"
else
  echo "$failures run(s) did not end as expected; see $OUT/*.log and $OUT/*/results.json"
  exit 1
fi
