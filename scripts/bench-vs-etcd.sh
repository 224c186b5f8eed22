#!/usr/bin/env bash
# bench-vs-etcd.sh: the same workloads against a 3-node raftkv and a 3-member etcd on this machine, in one run.
#
# It installs Debian's etcd-server (and protoc, jq) if missing, builds raftkv in release with the etcd bench
# target, starts both clusters on 127.0.0.1 with fresh data dirs, runs every workload against each, alternating
# which goes first from round to round, prints one table of raftkv/etcd ratios (medians over the rounds) and
# stops everything it started, by pid, whatever happens (trap on exit).
#
# Durability is the same on both sides: etcd fsyncs its WAL before it acknowledges, raftkv fdatasyncs its
# WAL on a majority (the leader's own sync before anything acts on the entry) before it acknowledges. Timing is the same: heartbeat 100 ms, election timeout 1000 ms.
#
# Usage: scripts/bench-vs-etcd.sh [--rounds N] [--duration 10s] [--clients 64] [--key-space 10000]
#                                 [--memory-keys 1000000] [--watchers 1000] [--watch-rate 100]
#                                 [--only WORKLOAD,...] [--out DIR] [--report DIR]
# --report DIR prints the table of an earlier run's results and starts nothing. --rounds 0 runs only the
# loads (and the memory and restart figures). The watch workload: --watchers watchers of every key while
# puts go in at --watch-rate per second; its op/s are events delivered, its latencies from put to event.
#
# Each workload also runs against raftkv through its etcd v3 API, with the same etcd-client load generator
# that drives etcd (system "raftkv-etcd"): the last columns give its throughput, its ratio to etcd, and that
# ratio over the one through raftkv's own API (1.00: the etcd face costs nothing).
#
# After the memory figure (MEMORY_KEYS keys loaded, --memory-keys 0 skips both), the restart figure: on each
# system a follower is killed with SIGKILL and started again on its data, and the time from its start to its
# first local (stale / serializable) read of a key written just before is measured.
# Environment: BENCH_BASE_PORT (default 6400): raftkv on BASE+1..3, etcd clients on BASE+11..13, etcd peers on
# BASE+21..23.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS=3
DURATION=10s
CLIENTS=64
KEY_SPACE=10000
MEMORY_KEYS=1000000
WATCHERS=1000
WATCH_RATE=100
ONLY=""
OUT=""
REPORT=""
BASE="${BENCH_BASE_PORT:-6400}"
# Longest wait for a cluster to elect a leader, in polls of POLL_SECONDS.
READY_POLLS=150
# Longest wait for a restarted node's first local read, in polls of RESTART_POLL_SECONDS.
RESTART_POLLS=6000
RESTART_POLL_SECONDS=0.05
POLL_SECONDS=0.2

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --key-space) KEY_SPACE="$2"; shift 2 ;;
        --memory-keys) MEMORY_KEYS="$2"; shift 2 ;;
        --watchers) WATCHERS="$2"; shift 2 ;;
        --watch-rate) WATCH_RATE="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --report) REPORT="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench-vs-etcd: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { echo "bench-vs-etcd: $*" >&2; }

# name|bench arguments (the key space is preloaded once per system, by the load phase)
WORKLOADS=(
    "put|put --clients $CLIENTS"
    "put-1-client|put --clients 1"
    "get-linearizable|get --consistency linearizable --clients $CLIENTS --no-preload"
    "get-lease|get --consistency lease --clients $CLIENTS --no-preload"
    "get-stale|get --consistency stale --clients $CLIENTS --no-preload"
    "mixed-50|mixed --read-ratio 0.5 --consistency linearizable --clients $CLIENTS --no-preload"
    "watch|watch --watchers $WATCHERS --rate $WATCH_RATE --clients 8 --connections 8"
)
selected() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# --- the table of ratios (medians over rounds) -------------------------------------------------------------
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
figure() { # name system jq-expression
    for file in "$OUT/$1.$2".*.json; do [ -f "$file" ] && jq -r "$3" "$file"; done | median
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
ms() { awk -v us="$1" 'BEGIN { printf "%.2fms", us / 1000 }'; }
report() {
    printf '\n%-18s %12s %12s %7s %10s %10s %7s %10s %10s %7s %13s %7s %8s\n' workload "raftkv op/s" "etcd op/s" \
        ratio "raftkv p50" "etcd p50" ratio "raftkv p99" "etcd p99" ratio "via-etcd op/s" ratio "vs own"
    local names=(load) entry name file rt et r50 e50 r99 e99 r_max e_max xt own via vs
    for entry in "${WORKLOADS[@]}"; do
        name="${entry%%|*}"
        selected "$name" && names+=("$name")
    done
    for file in "$OUT"/load-*.raftkv.0.json; do [ -f "$file" ] && names+=("$(basename "$file" .raftkv.0.json)"); done
    for name in "${names[@]}"; do
        ls "$OUT/$name".raftkv.*.json >/dev/null 2>&1 || continue
        rt=$(figure "$name" raftkv .throughput_ops_per_s) et=$(figure "$name" etcd .throughput_ops_per_s)
        r50=$(figure "$name" raftkv .latency.p50_us) e50=$(figure "$name" etcd .latency.p50_us)
        r99=$(figure "$name" raftkv .latency.p99_us) e99=$(figure "$name" etcd .latency.p99_us)
        own=$(ratio "$rt" "$et")
        # The load phase runs only against raftkv's own API: no etcd-API figure for it.
        xt=$(figure "$name" raftkv-etcd .throughput_ops_per_s || true) via="-" vs="-"
        if [ "$xt" != nan ]; then
            via=$(ratio "$xt" "$et") vs=$(ratio "$(ratio "$xt" "$et")" "$own")
            xt=$(printf '%.0f' "$xt")
        else
            xt="-"
        fi
        printf '%-18s %12.0f %12.0f %7s %10s %10s %7s %10s %10s %7s %13s %7s %8s\n' "$name" "$rt" "$et" "$own" \
            "$(ms "$r50")" "$(ms "$e50")" "$(ratio "$r50" "$e50")" "$(ms "$r99")" "$(ms "$e99")" "$(ratio "$r99" "$e99")" \
            "$xt" "$via" "$vs"
    done
    if [ -f "$OUT/memory.txt" ]; then
        echo
        echo "resident memory per node after loading $(cat "$OUT/memory-keys.txt" 2>/dev/null) keys (KiB):"
        awk '{ print "  " $1 " pid " $2 ": " $3 }' "$OUT/memory.txt"
        r_max=$(awk '$1 == "raftkv" { if ($3 > m) m = $3 } END { print m }' "$OUT/memory.txt")
        e_max=$(awk '$1 == "etcd" { if ($3 > m) m = $3 } END { print m }' "$OUT/memory.txt")
        echo "  largest node: raftkv ${r_max} KiB, etcd ${e_max} KiB, ratio $(ratio "$r_max" "$e_max")"
    fi
    if [ -f "$OUT/restart.txt" ]; then
        echo
        echo "a follower killed (SIGKILL) and restarted with those keys, start to first local read (ms):"
        awk '{ print "  " $1 " node " $2 ": " $3 }' "$OUT/restart.txt"
        r_max=$(awk '$1 == "raftkv" { print $3 }' "$OUT/restart.txt")
        e_max=$(awk '$1 == "etcd" { print $3 }' "$OUT/restart.txt")
        echo "  ratio raftkv/etcd $(ratio "$r_max" "$e_max")"
    fi
    echo
    echo "per-run JSON: $OUT"
}
if [ -n "$REPORT" ]; then
    OUT="$REPORT"
    report
    exit 0
fi

# --- prerequisites ---------------------------------------------------------------------------------------
# shellcheck source=lib/packages.sh
. "$ROOT/scripts/lib/packages.sh"
# shellcheck source=lib/processes.sh
. "$ROOT/scripts/lib/processes.sh"
install_missing etcd=etcd-server etcdctl=etcd-client protoc=protobuf-compiler jq=jq

log "building raftkv (release, with the etcd bench target)"
(cd "$ROOT" && cargo build --release -q -p raftkv-server -p raftkv-client --features raftkv-client/etcd)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
RAFTKV="$BIN/raftkv"

for port in $((BASE + 1)) $((BASE + 2)) $((BASE + 3)) $((BASE + 11)) $((BASE + 12)) $((BASE + 13)) \
    $((BASE + 21)) $((BASE + 22)) $((BASE + 23)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        log "port $port is in use: set BENCH_BASE_PORT to a free range"
        exit 2
    fi
done

# --- start and stop ----------------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/bench-vs-etcd.XXXXXX")"
[ -n "$OUT" ] || OUT="$WORK/results"
mkdir -p "$OUT"
PIDS=()
RAFTKV_PIDS=()
ETCD_PIDS=()

stop_all() {
    stop_pids "${PIDS[@]}"
    rm -rf "$WORK/raftkv" "$WORK/etcd"
    log "stopped everything; results in $OUT"
}
trap stop_all EXIT

RAFTKV_ENDPOINTS="127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2)),127.0.0.1:$((BASE + 3))"
ETCD_ENDPOINTS="127.0.0.1:$((BASE + 11)),127.0.0.1:$((BASE + 12)),127.0.0.1:$((BASE + 13))"

launch_raftkv() { # node id; its pid is RAFTKV_PIDS[id - 1]
    local i="$1" initial="1=127.0.0.1:$((BASE + 1)),2=127.0.0.1:$((BASE + 2)),3=127.0.0.1:$((BASE + 3))"
    "$BIN/raftkv-server" --id "$i" --listen "127.0.0.1:$((BASE + i))" --data-dir "$WORK/raftkv/node$i" \
        --initial-cluster "$initial" --heartbeat-interval-ms 100 --election-timeout-min-ms 1000 \
        --election-timeout-max-ms 2000 >>"$WORK/raftkv-$i.log" 2>&1 &
    PIDS+=($!)
    RAFTKV_PIDS[i - 1]=$!
}

start_raftkv() {
    local i
    for i in 1 2 3; do launch_raftkv "$i"; done
    local polls=0
    until "$RAFTKV" --endpoints "$RAFTKV_ENDPOINTS" --timeout 1s -w json status 2>/dev/null |
        jq -s -e 'map(select(.role == "leader")) | length == 1' >/dev/null; do
        polls=$((polls + 1))
        [ $polls -lt $READY_POLLS ] || { log "raftkv elected no leader; see $WORK/raftkv-*.log"; exit 1; }
        sleep "$POLL_SECONDS"
    done
}

launch_etcd() { # member number; its pid is ETCD_PIDS[number - 1]
    local i="$1"
    local cluster="e1=http://127.0.0.1:$((BASE + 21)),e2=http://127.0.0.1:$((BASE + 22)),e3=http://127.0.0.1:$((BASE + 23))"
    etcd --name "e$i" --data-dir "$WORK/etcd/e$i" \
        --listen-client-urls "http://127.0.0.1:$((BASE + 10 + i))" \
        --advertise-client-urls "http://127.0.0.1:$((BASE + 10 + i))" \
        --listen-peer-urls "http://127.0.0.1:$((BASE + 20 + i))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((BASE + 20 + i))" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench-vs-etcd \
        --heartbeat-interval 100 --election-timeout 1000 --log-level error \
        >>"$WORK/etcd-$i.log" 2>&1 &
    PIDS+=($!)
    ETCD_PIDS[i - 1]=$!
}

start_etcd() {
    local i
    for i in 1 2 3; do launch_etcd "$i"; done
    local polls=0
    until ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint status -w json 2>/dev/null |
        jq -e '[.[] | select(.Status.leader != 0 and .Status.leader == .Status.header.member_id)] | length == 1' \
            >/dev/null; do
        polls=$((polls + 1))
        [ $polls -lt $READY_POLLS ] || { log "etcd elected no leader; see $WORK/etcd-*.log"; exit 1; }
        sleep "$POLL_SECONDS"
    done
}

# --- workloads -------------------------------------------------------------------------------------------
bench() { # system name round key-space arguments...
    local system="$1" name="$2" round="$3" key_space="$4"
    shift 4
    local endpoints="$RAFTKV_ENDPOINTS" target="$system"
    [ "$system" = etcd ] && endpoints="$ETCD_ENDPOINTS"
    # raftkv through its etcd API, driven by the etcd load generator.
    [ "$system" = raftkv-etcd ] && target=etcd
    local file="$OUT/$name.$system.$round.json"
    # Exit 1 means some operations failed: the figures still count, and the error counts are in the JSON.
    "$RAFTKV" --endpoints "$endpoints" --timeout 10s -w json bench --target "$target" \
        --key-space "$key_space" "$@" >"$file" || [ $? -eq 1 ]
    jq -r --arg name "$name" --arg round "$round" \
        --arg system "$system" '"\($round) \($system) \($name): \(.throughput_ops_per_s) ops/s p50 \(.latency.p50_us) us p99 \(.latency.p99_us) us errors \(.errors)"' \
        "$file" >&2
}

log "starting raftkv on $RAFTKV_ENDPOINTS and etcd on $ETCD_ENDPOINTS (data in $WORK)"
start_raftkv
start_etcd

for system in raftkv etcd; do
    bench "$system" load 0 "$KEY_SPACE" load --clients "$CLIENTS"
done

for round in $(seq 1 "$ROUNDS"); do
    for entry in "${WORKLOADS[@]}"; do
        name="${entry%%|*}"
        selected "$name" || continue
        read -r -a arguments <<<"${entry#*|}"
        case $((round % 3)) in
            1) order="raftkv etcd raftkv-etcd" ;;
            2) order="etcd raftkv-etcd raftkv" ;;
            *) order="raftkv-etcd raftkv etcd" ;;
        esac
        for system in $order; do
            bench "$system" "$name" "$round" "$KEY_SPACE" "${arguments[@]}" --duration "$DURATION"
        done
    done
done

# --- memory after loading MEMORY_KEYS keys ---------------------------------------------------------------
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
if [ "$MEMORY_KEYS" -gt 0 ]; then
    for system in raftkv etcd; do
        log "loading $MEMORY_KEYS keys into $system for the memory figure"
        bench "$system" "load-$MEMORY_KEYS" 0 "$MEMORY_KEYS" load --clients "$CLIENTS"
    done
    {
        for pid in "${RAFTKV_PIDS[@]}"; do echo "raftkv $pid $(rss_kib "$pid")"; done
        for pid in "${ETCD_PIDS[@]}"; do echo "etcd $pid $(rss_kib "$pid")"; done
    } >"$OUT/memory.txt"
    echo "$MEMORY_KEYS" >"$OUT/memory-keys.txt"
fi

# --- restart of a follower with MEMORY_KEYS keys: start to first local read ---------------------------------
now_ms() { date +%s%3N; }
follower_raftkv() { # a node that is not the leader
    "$RAFTKV" --endpoints "$RAFTKV_ENDPOINTS" --timeout 5s -w json status |
        jq -r 'select(.role == "follower") | .id' | head -n 1
}
follower_etcd() {
    ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint status -w json |
        jq -r '.[] | select(.Status.leader != .Status.header.member_id) | .Endpoint' | head -n 1 |
        awk -F: '{ print $NF - '"$BASE"' - 10 }'
}
local_read() { # system node
    if [ "$1" = raftkv ]; then
        local addr="127.0.0.1:$((BASE + $2))"
        "$RAFTKV" --endpoints "$addr" --timeout 1s get restart-probe --consistency stale --endpoint "$addr" \
            >/dev/null 2>&1
    else
        ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$((BASE + 10 + $2))" --command-timeout=1s \
            get restart-probe --consistency=s 2>/dev/null | grep -q restart-probe
    fi
}
restart_follower() { # system: prints the follower's id and the ms from its start to its first local read
    local system="$1" node pid started polls=0
    if [ "$system" = raftkv ]; then
        "$RAFTKV" --endpoints "$RAFTKV_ENDPOINTS" put restart-probe x >/dev/null
        node=$(follower_raftkv)
        pid="${RAFTKV_PIDS[node - 1]}"
    else
        ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" put restart-probe x >/dev/null
        node=$(follower_etcd)
        pid="${ETCD_PIDS[node - 1]}"
    fi
    # The probe must be applied on the follower before it dies, or the read would wait for catching up too.
    until local_read "$system" "$node"; do
        polls=$((polls + 1))
        [ $polls -lt $RESTART_POLLS ] || { log "$system node $node never served the probe"; exit 1; }
        sleep "$RESTART_POLL_SECONDS"
    done
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    started=$(now_ms)
    if [ "$system" = raftkv ]; then launch_raftkv "$node"; else launch_etcd "$node"; fi
    polls=0
    until local_read "$system" "$node"; do
        polls=$((polls + 1))
        [ $polls -lt $RESTART_POLLS ] || { log "$system node $node served no local read after its restart"; exit 1; }
        sleep "$RESTART_POLL_SECONDS"
    done
    echo "$system $node $(($(now_ms) - started))"
}
if [ "$MEMORY_KEYS" -gt 0 ]; then
    for system in raftkv etcd; do
        log "restarting a $system follower holding $MEMORY_KEYS keys"
        restart_follower "$system"
    done >"$OUT/restart.txt"
fi

report
echo "rounds: $ROUNDS, duration: $DURATION, clients: $CLIENTS, key space: $KEY_SPACE"
