#!/usr/bin/env bash
# snapshot-under-load.sh: what a snapshot costs the writes that run through it.
#
# Starts a 3-node raftkv (release build) twice on fresh data dirs: once snapshotting so rarely that no snapshot
# is taken during the run, once every --snapshot-after-entries entries (each node draws its threshold up to a
# quarter lower, and builds at most a quarter of the time), so that snapshots are built (from sled,
# while entries go on being applied) all through the run. Each time it loads --keys keys, then runs an
# open-loop put load at --rate (about half of capacity) for --duration and records its latency. It prints both
# runs and the ratio of their p99s (the target: at most 2), with the number of snapshots built during each run.
#
# Usage: scripts/snapshot-under-load.sh [--keys 200000] [--rate 6000] [--duration 30s]
#                                       [--snapshot-after-entries 2000] [--out DIR]
# Environment: BENCH_BASE_PORT (default 6500): nodes on BASE+1..3.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KEYS=200000
RATE=6000
DURATION=30s
SNAPSHOT_AFTER=2000
# Entries between snapshots in the run without: more than any run here appends.
SNAPSHOT_NEVER=1000000000
OUT=""
BASE="${BENCH_BASE_PORT:-6500}"
CLIENTS=64
# Longest wait for a leader, in polls of POLL_SECONDS.
READY_POLLS=150
POLL_SECONDS=0.2

while [ $# -gt 0 ]; do
    case "$1" in
        --keys) KEYS="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --snapshot-after-entries) SNAPSHOT_AFTER="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^# Environment/p' "$0"; exit 0 ;;
        *) echo "snapshot-under-load: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
log() { echo "snapshot-under-load: $*" >&2; }

# shellcheck source=lib/packages.sh
. "$ROOT/scripts/lib/packages.sh"
# shellcheck source=lib/processes.sh
. "$ROOT/scripts/lib/processes.sh"
install_missing jq=jq
log "building raftkv (release)"
(cd "$ROOT" && cargo build --release -q -p raftkv-server -p raftkv-client)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
RAFTKV="$BIN/raftkv"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/snapshot-under-load.XXXXXX")"
[ -n "$OUT" ] || OUT="$WORK/results"
mkdir -p "$OUT"
PIDS=()
ENDPOINTS="127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2)),127.0.0.1:$((BASE + 3))"

stop_nodes() {
    stop_pids "${PIDS[@]}"
    PIDS=()
}
trap 'stop_nodes; rm -rf "$WORK/nodes"; log "results in $OUT"' EXIT

snapshots_built() { cat "$WORK"/node-*.log 2>/dev/null | grep -c "snapshot built" || true; }

run() { # name snapshot-after-entries
    local name="$1" after="$2" initial i polls=0 before
    initial="1=127.0.0.1:$((BASE + 1)),2=127.0.0.1:$((BASE + 2)),3=127.0.0.1:$((BASE + 3))"
    rm -rf "$WORK/nodes" "$WORK"/node-*.log
    for i in 1 2 3; do
        "$BIN/raftkv-server" --id "$i" --listen "127.0.0.1:$((BASE + i))" --data-dir "$WORK/nodes/$i" \
            --initial-cluster "$initial" --snapshot-after-entries "$after" >"$WORK/node-$i.log" 2>&1 &
        PIDS+=($!)
    done
    until "$RAFTKV" --endpoints "$ENDPOINTS" --timeout 1s -w json status 2>/dev/null |
        jq -s -e 'map(select(.role == "leader")) | length == 1' >/dev/null; do
        polls=$((polls + 1))
        [ $polls -lt $READY_POLLS ] || { log "no leader; see $WORK/node-*.log"; exit 1; }
        sleep "$POLL_SECONDS"
    done
    log "$name: loading $KEYS keys"
    "$RAFTKV" --endpoints "$ENDPOINTS" -w json bench load --key-space "$KEYS" --clients "$CLIENTS" \
        >"$OUT/$name.load.json" || [ $? -eq 1 ]
    before=$(snapshots_built)
    log "$name: puts at $RATE/s for $DURATION"
    "$RAFTKV" --endpoints "$ENDPOINTS" -w json bench put --key-space "$KEYS" --clients "$CLIENTS" \
        --rate "$RATE" --duration "$DURATION" --no-preload >"$OUT/$name.json" || [ $? -eq 1 ]
    echo $(($(snapshots_built) - before)) >"$OUT/$name.snapshots"
    stop_nodes
}

run without "$SNAPSHOT_NEVER"
run with "$SNAPSHOT_AFTER"

printf '\n%-8s %10s %10s %10s %10s %10s %7s\n' run snapshots "op/s" p50 p99 max errors
for name in without with; do
    jq -r --arg name "$name" --arg snapshots "$(cat "$OUT/$name.snapshots")" \
        '"\($name) \($snapshots) \(.throughput_ops_per_s|floor) \(.latency.p50_us/1000)ms \(.latency.p99_us/1000)ms \(.latency.max_us/1000)ms \(.errors)"' \
        "$OUT/$name.json" | awk '{ printf "%-8s %10s %10s %10s %10s %10s %7s\n", $1, $2, $3, $4, $5, $6, $7 }'
done
awk -v a="$(jq .latency.p99_us "$OUT/with.json")" -v b="$(jq .latency.p99_us "$OUT/without.json")" \
    'BEGIN { printf "\np99 with snapshots / without: %.2f (target: at most 2)\n", a / b }'
echo "keys: $KEYS, rate: $RATE/s, duration: $DURATION, snapshot every $SNAPSHOT_AFTER entries"
