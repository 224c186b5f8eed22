#!/usr/bin/env bash
# failover-vs-etcd.sh: leader failover, raftkv vs etcd, side by side in one run on 127.0.0.1: after the leader
# fails, how long until a survivor leads in a higher term, and until the first write is acknowledged.
#
# It installs Debian's etcd-server, etcd-client and jq if missing (the build needs no protoc), builds raftkv
# and jepsen-lite in release, starts a raftkv cluster and an etcd cluster of --nodes members each with fresh
# data dirs, and for each round and fault: waits until the cluster is healthy (every node names one leader, a
# write succeeds, and the leader is still the same after it), faults the leader, measures, undoes the fault
# and waits for the node to rejoin. Rounds alternate which system goes first, so machine noise hits both. It
# prints one table per fault with a line of raftkv/etcd ratios, writes every round to DIR/rounds.tsv (one line
# per round), and stops everything it started, by pid, whatever happens (trap on exit).
#
# Timing: both at their own defaults, no timing flag passed. raftkv-server: heartbeat 100 ms, election timeout
# 1000-2000 ms (the default maximum is read from `raftkv-server --help`); etcd 3.4: heartbeat 100 ms,
# election 1000 ms.
#
# Faults. kill: SIGKILL the leader's pid; undo: start it again with the same data dir and flags. isolate: cut
# every link between the leader and each other member, both ways, connections kept open (bytes held, not
# dropped); undo: heal. Every peer link of both clusters goes through a `jepsen-lite net serve` mesh, in kill
# rounds too, so both pay for the proxies alike. raftkv nodes dial each peer through that link's own proxy
# (--peer-route). etcd members advertise one peer URL that every other member dials, so no proxy per link can
# be put in by addresses: each member advertises a front proxy (`net serve --attribute header`) that binds
# each connection to link i->j by the X-Server-From header rafthttp puts on every raft request (streams,
# pipeline, snapshots), with member ids registered from `etcdctl member list --hex`. Raft traffic is cut
# exactly as raftkv's is. rafthttp's RTT probes (/raft/probing) and the server's /version calls name no
# sender: they pass on a connection until it carries a raft request. Checked by hand: with the etcd leader
# isolated, the others elect a new one within about a second; the old one commits nothing (a put through it
# times out, it never sees the survivors' writes), and its streams, re-dialled after their 5 s read timeout,
# are bound and held too; heal brings it back.
#
# Figures, from the fault instant (date +%s%N right after the kill or isolate command returned), both
# measured side by side: new leader = until a survivor reports itself leader in a higher term (the survivors'
# status polled every POLL_SECONDS plus one status call); first write = until a put against every endpoint,
# listed in id order, exits 0: one attempt at a time, each with a 1 s timeout (raftkv --timeout 1s; etcdctl
# --command-timeout=1s --dial-timeout=1s), a pause of WRITE_RETRY_SECONDS after a failed one. A figure not
# reached within FAILOVER_WAIT_SECONDS is NA and counts as slow.
#
# Usage: scripts/failover-vs-etcd.sh [--nodes 3|5] [--rounds N] [--fault kill|isolate|both]
#                                    [--system raftkv|etcd|both] [--out DIR] [--slow-ms MS] [--report DIR]
# --slow-ms MS: rounds over MS count as slow (default 3 x raftkv's default election_timeout_max). --report DIR
# prints the tables of an earlier run from DIR/rounds.tsv and starts nothing. Defaults: 3 nodes, 20 rounds,
# both faults, both systems, results in a new temporary directory (printed at the end).
# Environment: FAILOVER_BASE_PORT (default 6600): raftkv nodes on BASE+1..5 and their link proxies on
# BASE+112..154 (control BASE+99); etcd clients on BASE+11..15, peers on BASE+21..25 behind fronts on
# BASE+31..35 (control BASE+98). The range must stay below 7000 (the local cluster) and off 2379-2380.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NODES=3
ROUNDS=20
FAULT=both
SYSTEM=both
OUT=""
SLOW_MS=""
REPORT=""
BASE="${FAILOVER_BASE_PORT:-6600}"
# The per-attempt timeout of every status and put call, on both sides.
ATTEMPT_TIMEOUT=1s
# Pause between two status polls of the survivors, and after a failed put while measuring.
POLL_SECONDS=0.02
WRITE_RETRY_SECONDS=0.02
# Longest wait for either figure after the fault; past it the figure is NA.
FAILOVER_WAIT_SECONDS=30
# Longest wait for a cluster to be healthy (a leader every node names, a write), in polls of HEALTH_POLL_SECONDS.
READY_WAIT_SECONDS=90
HEALTH_POLL_SECONDS=0.2
# Pause after a fault is undone, before the health check: a healed etcd member that campaigned while cut off
# disrupts the term it rejoins, and a restarted node catches up; the check then sees the settled cluster.
SETTLE_SECONDS=1
# Longest wait for a mesh to print `ready`, in polls of 0.1 s.
MESH_READY_POLLS=100
# The port range the layout above uses, relative to BASE.
PORT_OFFSET_MIN=1
PORT_OFFSET_MAX=155
# Ports this script must never use: the local cluster's (scripts/cluster.sh) and above; etcd's defaults.
FORBIDDEN_FROM=7000
ETCD_DEFAULT_PORTS=(2379 2380)
# rounds.tsv: one line per round; order is 1 for the system that went first in its round and fault.
ROUNDS_COLUMNS=(round system fault order old_leader old_term new_leader_ms new_leader new_term first_write_ms
    write_attempts fault_epoch_ms)

usage() { sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) NODES="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --fault) FAULT="$2"; shift 2 ;;
        --system) SYSTEM="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --slow-ms) SLOW_MS="$2"; shift 2 ;;
        --report) REPORT="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "failover-vs-etcd: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { echo "failover-vs-etcd: $*" >&2; }
die() { log "$*"; exit 2; }

case "$NODES" in 3|5) ;; *) die "--nodes takes 3 or 5, not '$NODES'" ;; esac
[[ "$ROUNDS" =~ ^[0-9]+$ ]] && [ "$ROUNDS" -ge 1 ] || die "--rounds takes a whole number of at least 1, not '$ROUNDS'"
case "$FAULT" in kill) FAULTS=(kill) ;; isolate) FAULTS=(isolate) ;; both) FAULTS=(kill isolate) ;;
    *) die "--fault takes kill, isolate or both, not '$FAULT'" ;; esac
case "$SYSTEM" in raftkv) SYSTEMS=(raftkv) ;; etcd) SYSTEMS=(etcd) ;; both) SYSTEMS=(raftkv etcd) ;;
    *) die "--system takes raftkv, etcd or both, not '$SYSTEM'" ;; esac
[ -z "$SLOW_MS" ] || [[ "$SLOW_MS" =~ ^[0-9]+$ ]] || die "--slow-ms takes a whole number of milliseconds, not '$SLOW_MS'"

# --- the tables ---------------------------------------------------------------------------------------------
# run.txt holds KEY=VALUE lines about the run; read, never sourced.
run_value() { sed -n "s/^$1=//p" "$OUT/run.txt" 2>/dev/null | head -n 1; }

# One column of the rounds of a system and fault: the figures, one a line ("NA" where none was reached).
column() { # system fault column-name
    awk -F'\t' -v wanted_system="$1" -v wanted_fault="$2" -v name="$3" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) c = i; next }
        $2 == wanted_system && $3 == wanted_fault { print $c }' "$OUT/rounds.tsv"
}

# "count na min p50 p99 max slow" of one column (nearest-rank percentiles; NA counts as slow).
summary() { # system fault column-name slow-ms
    local values na
    values=$(column "$1" "$2" "$3")
    na=$(grep -c '^NA$' <<<"$values" || true)
    { grep -v '^NA$' <<<"$values" | grep . || true; } | sort -n | awk -v na="$na" -v slow="$4" '
        { v[++n] = $1; if ($1 + 0 > slow + 0) over++ }
        function rank(q,   r) { r = int(q * n); if (r < q * n) r++; if (r < 1) r = 1; return v[r] }
        END {
            if (n == 0) { print 0, na, "-", "-", "-", "-", na; exit }
            print n, na, v[1], rank(0.5), rank(0.99), v[n], over + na
        }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "-" && b != "-" && b > 0) printf "%.2f", a / b; else print "-" }'; }

report() {
    [ -f "$OUT/rounds.tsv" ] || die "no rounds.tsv in $OUT"
    local nodes slow fault system figure name present row
    nodes=$(run_value nodes)
    slow=${SLOW_MS:-$(run_value slow_ms)}
    for fault in kill isolate; do
        present=$(awk -F'\t' -v fault="$fault" 'NR > 1 && $3 == fault { n++ } END { print n + 0 }' "$OUT/rounds.tsv")
        [ "$present" -gt 0 ] || continue
        echo
        echo "fault $fault, $nodes nodes; slow = over $slow ms or NA (not reached within $(run_value failover_wait_seconds) s); ms from the fault"
        printf '%-12s %-7s %6s %4s %7s %7s %7s %7s %5s\n' figure system count NA min p50 p99 max slow
        declare -A stats=()
        for figure in new_leader_ms first_write_ms; do
            name="${figure%_ms}"
            name="${name//_/ }"
            for system in raftkv etcd; do
                [ "$(column "$system" "$fault" "$figure" | grep -c . || true)" -gt 0 ] || continue
                row=$(summary "$system" "$fault" "$figure" "$slow")
                stats[$system.$figure]="$row"
                # shellcheck disable=SC2086
                printf '%-12s %-7s %6s %4s %7s %7s %7s %7s %5s\n' "$name" "$system" $row
            done
        done
        if [ -n "${stats[raftkv.new_leader_ms]:-}" ] && [ -n "${stats[etcd.new_leader_ms]:-}" ]; then
            local line="raftkv/etcd"
            for figure in new_leader_ms first_write_ms; do
                read -r _ _ rmin r50 r99 rmax _ <<<"${stats[raftkv.$figure]}"
                read -r _ _ emin e50 e99 emax _ <<<"${stats[etcd.$figure]}"
                name="${figure%_ms}"
                line+="  ${name//_/ }: min $(ratio "$rmin" "$emin") p50 $(ratio "$r50" "$e50") p99 $(ratio "$r99" "$e99") max $(ratio "$rmax" "$emax")"
            done
            echo "$line"
        fi
        unset stats
    done
    echo
    echo "per-round figures: $OUT/rounds.tsv"
}
if [ -n "$REPORT" ]; then
    OUT="$REPORT"
    report
    exit 0
fi

# --- prerequisites ---------------------------------------------------------------------------------------
# Neither system may pick up a setting from the caller's environment (etcd reads every flag from ETCD_*, the
# raftkv CLI its endpoints and CA from RAFTKV_*): both run at their defaults.
while read -r name; do unset "$name"; done < <(compgen -e | grep -E '^(RAFTKV_|ETCD_|ETCDCTL_|JEPSEN_LITE_)' || true)
export ETCDCTL_API=3

# shellcheck source=lib/packages.sh
. "$ROOT/scripts/lib/packages.sh"
# shellcheck source=lib/processes.sh
. "$ROOT/scripts/lib/processes.sh"
install_missing etcd=etcd-server etcdctl=etcd-client jq=jq

log "building raftkv and jepsen-lite (release)"
(cd "$ROOT" && cargo build --release -q -p raftkv-server -p raftkv-client -p jepsen-lite)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
RAFTKV="$BIN/raftkv"
JEPSEN_LITE="$BIN/jepsen-lite"

ELECTION_MAX_MS=$("$BIN/raftkv-server" --help | awk '
    /--election-timeout-max-ms/ { found = 1 }
    found && match($0, /\[default: [0-9]+\]/) { print substr($0, RSTART + 10, RLENGTH - 11); exit }')
[[ "$ELECTION_MAX_MS" =~ ^[0-9]+$ ]] ||
    die "cannot read the default of --election-timeout-max-ms from raftkv-server --help; pass --slow-ms"
[ -n "$SLOW_MS" ] || SLOW_MS=$((3 * ELECTION_MAX_MS))

[[ "$BASE" =~ ^[0-9]+$ ]] || die "FAILOVER_BASE_PORT must be a port number, not '$BASE'"
[ "$BASE" -ge 1024 ] && [ $((BASE + PORT_OFFSET_MAX)) -lt $FORBIDDEN_FROM ] ||
    die "FAILOVER_BASE_PORT=$BASE puts ports outside 1025..$((FORBIDDEN_FROM - 1)); the script uses BASE+$PORT_OFFSET_MIN..BASE+$PORT_OFFSET_MAX"
for port in "${ETCD_DEFAULT_PORTS[@]}"; do
    [ "$port" -lt $((BASE + PORT_OFFSET_MIN)) ] || [ "$port" -gt $((BASE + PORT_OFFSET_MAX)) ] ||
        die "FAILOVER_BASE_PORT=$BASE would use port $port (etcd's default); pick another base"
done

# --- layout ----------------------------------------------------------------------------------------------
raftkv_port() { echo $((BASE + $1)); }
etcd_client_port() { echo $((BASE + 10 + $1)); }
etcd_peer_port() { echo $((BASE + 20 + $1)); }
ETCD_FRONT_BASE=$((BASE + 30))
RAFTKV_LINK_BASE=$((BASE + 100))
RAFTKV_CONTROL="127.0.0.1:$((BASE + 99))"
ETCD_CONTROL="127.0.0.1:$((BASE + 98))"
IDS=$(seq 1 "$NODES")

ports=("${RAFTKV_CONTROL##*:}" "${ETCD_CONTROL##*:}")
for i in $IDS; do
    ports+=("$(raftkv_port "$i")" "$(etcd_client_port "$i")" "$(etcd_peer_port "$i")" $((ETCD_FRONT_BASE + i)))
    for j in $IDS; do [ "$i" = "$j" ] || ports+=($((RAFTKV_LINK_BASE + 10 * i + j))); done
done
for port in "${ports[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use: set FAILOVER_BASE_PORT to a free range"
    fi
done

joined() { local IFS=,; echo "$*"; }
list=(); for i in $IDS; do list+=("127.0.0.1:$(raftkv_port "$i")"); done; RAFTKV_ENDPOINTS=$(joined "${list[@]}")
list=(); for i in $IDS; do list+=("127.0.0.1:$(etcd_client_port "$i")"); done; ETCD_ENDPOINTS=$(joined "${list[@]}")

# Every endpoint of `system` but node `id`'s, in id order.
survivors() { # system id
    local i list=()
    for i in $IDS; do
        [ "$i" = "$2" ] && continue
        if [ "$1" = raftkv ]; then list+=("127.0.0.1:$(raftkv_port "$i")"); else list+=("127.0.0.1:$(etcd_client_port "$i")"); fi
    done
    joined "${list[@]}"
}

# --- start and stop ----------------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/failover-vs-etcd.XXXXXX")"
[ -n "$OUT" ] || OUT="$WORK/results"
mkdir -p "$OUT"
declare -A RAFTKV_PIDS=() ETCD_PIDS=() MESH_PIDS=()
MEASURE_PIDS=()

stop_all() {
    local pid child pids=()
    # The measuring loops first, with the status or put call each may be waiting on (their children, by pid).
    for pid in "${MEASURE_PIDS[@]}"; do
        for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do pids+=("$child"); done
        pids+=("$pid")
    done
    pids+=("${RAFTKV_PIDS[@]}" "${ETCD_PIDS[@]}" "${MESH_PIDS[@]}")
    stop_pids "${pids[@]}"
    rm -rf "$WORK/raftkv" "$WORK/etcd"
    log "stopped everything; logs in $WORK, results in $OUT"
}
trap stop_all EXIT
# A signal ends the script through its EXIT trap.
trap 'exit 130' INT
trap 'exit 143' TERM

start_mesh() { # system
    local system="$1" nodes=() i output="$WORK/mesh-$1.out" polls=0
    if [ "$system" = raftkv ]; then
        for i in $IDS; do nodes+=("$i=127.0.0.1:$(raftkv_port "$i")"); done
        "$JEPSEN_LITE" net serve --nodes "$(joined "${nodes[@]}")" --base-port "$RAFTKV_LINK_BASE" \
            --control "$RAFTKV_CONTROL" >"$output" 2>"$WORK/mesh-$system.log" &
    else
        for i in $IDS; do nodes+=("$i=127.0.0.1:$(etcd_peer_port "$i")"); done
        "$JEPSEN_LITE" net serve --attribute header --nodes "$(joined "${nodes[@]}")" \
            --base-port "$ETCD_FRONT_BASE" --control "$ETCD_CONTROL" >"$output" 2>"$WORK/mesh-$system.log" &
    fi
    MESH_PIDS[$system]=$!
    until grep -q '^ready ' "$output" 2>/dev/null; do
        polls=$((polls + 1))
        [ $polls -lt $MESH_READY_POLLS ] || die "the $system mesh did not start; see $WORK/mesh-$system.log"
        kill -0 "${MESH_PIDS[$system]}" 2>/dev/null || die "the $system mesh exited; see $WORK/mesh-$system.log"
        sleep 0.1
    done
}

mesh() { # system command... (isolate ID, heal, member ID HEX)
    local system="$1" control="$RAFTKV_CONTROL"
    shift
    [ "$system" = raftkv ] || control="$ETCD_CONTROL"
    "$JEPSEN_LITE" net "$@" --control "$control" >/dev/null
}

# No timing flag: raftkv-server's defaults are what is measured.
start_raftkv_node() { # id
    local i="$1" j initial=() routes=()
    for j in $IDS; do
        initial+=("$j=127.0.0.1:$(raftkv_port "$j")")
        [ "$j" = "$i" ] || routes+=(--peer-route "$j=127.0.0.1:$((RAFTKV_LINK_BASE + 10 * i + j))")
    done
    "$BIN/raftkv-server" --id "$i" --listen "127.0.0.1:$(raftkv_port "$i")" --data-dir "$WORK/raftkv/node$i" \
        --initial-cluster "$(joined "${initial[@]}")" "${routes[@]}" >>"$WORK/raftkv-$i.log" 2>&1 &
    RAFTKV_PIDS[$i]=$!
}

# No timing flag: etcd's defaults (heartbeat 100 ms, election 1000 ms) are what is measured. Each member
# advertises its front as its peer URL; a restart with the data dir reuses its id and ignores the cluster flags.
start_etcd_member() { # id
    local i="$1" j cluster=()
    for j in $IDS; do cluster+=("e$j=http://127.0.0.1:$((ETCD_FRONT_BASE + j))"); done
    etcd --name "e$i" --data-dir "$WORK/etcd/e$i" \
        --listen-client-urls "http://127.0.0.1:$(etcd_client_port "$i")" \
        --advertise-client-urls "http://127.0.0.1:$(etcd_client_port "$i")" \
        --listen-peer-urls "http://127.0.0.1:$(etcd_peer_port "$i")" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_FRONT_BASE + i))" \
        --initial-cluster "$(joined "${cluster[@]}")" --initial-cluster-state new \
        --initial-cluster-token failover-vs-etcd >>"$WORK/etcd-$i.log" 2>&1 &
    ETCD_PIDS[$i]=$!
}

# Tells the etcd mesh which member id each node's requests name (readable once the members formed a cluster,
# which they do through the fronts before any id is known).
register_etcd_members() {
    local deadline=$((SECONDS + READY_WAIT_SECONDS)) members id name registered
    while [ $SECONDS -lt $deadline ]; do
        members=$(etcdctl --endpoints "$ETCD_ENDPOINTS" --command-timeout="$ATTEMPT_TIMEOUT" \
            --dial-timeout="$ATTEMPT_TIMEOUT" member list --hex 2>/dev/null || true)
        registered=0
        while IFS=', ' read -r id _ name _; do
            [[ "$name" =~ ^e[0-9]+$ ]] || continue
            mesh etcd member "${name#e}" "$id"
            registered=$((registered + 1))
        done <<<"$members"
        [ "$registered" -eq "$NODES" ] && return 0
        sleep "$HEALTH_POLL_SECONDS"
    done
    die "could not read the etcd member ids within ${READY_WAIT_SECONDS}s; see $WORK/etcd-*.log"
}

# --- status and writes, the same calls on both sides ---------------------------------------------------------
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# "ID TERM" of the leader when every node answers and names the same one, else nothing.
raftkv_leader() {
    "$RAFTKV" --endpoints "$RAFTKV_ENDPOINTS" --timeout "$ATTEMPT_TIMEOUT" -w json status 2>/dev/null |
        jq -r -s --argjson nodes "$NODES" '
            if length == $nodes and all(.[]; .error == null and .leader != null)
                and ([.[].leader] | unique | length) == 1
            then .[] | select(.role == "leader" and .id == .leader) | "\(.id) \(.term)" else empty end' || true
}
etcd_leader() {
    # Ids are u64s that jq 1.6 reads as doubles; each is only compared with itself, which rounding keeps.
    etcdctl --endpoints "$ETCD_ENDPOINTS" --command-timeout="$ATTEMPT_TIMEOUT" --dial-timeout="$ATTEMPT_TIMEOUT" \
        endpoint status -w json 2>/dev/null |
        jq -r --argjson nodes "$NODES" --argjson base "$((BASE + 10))" '
            if length == $nodes and all(.[]; .Status.leader != 0)
                and ([.[].Status.leader] | unique | length) == 1
            then .[] | select(.Status.leader == .Status.header.member_id)
                | "\((.Endpoint | split(":") | last | tonumber) - $base) \(.Status.raftTerm)"
            else empty end' || true
}

# "ID TERM" of a node among `endpoints` that reports itself leader in a term above `term`, else nothing.
raftkv_new_leader() { # endpoints term
    "$RAFTKV" --endpoints "$1" --timeout "$ATTEMPT_TIMEOUT" -w json status 2>/dev/null |
        jq -r -s --argjson term "$2" \
            '[.[] | select(.role == "leader" and .term > $term)] | first // empty | "\(.id) \(.term)"' || true
}
etcd_new_leader() { # endpoints term
    etcdctl --endpoints "$1" --command-timeout="$ATTEMPT_TIMEOUT" --dial-timeout="$ATTEMPT_TIMEOUT" \
        endpoint status -w json 2>/dev/null |
        jq -r --argjson term "$2" --argjson base "$((BASE + 10))" '
            [.[] | select(.Status.leader == .Status.header.member_id and .Status.raftTerm > $term)] | first // empty
            | "\((.Endpoint | split(":") | last | tonumber) - $base) \(.Status.raftTerm)"' || true
}

raftkv_put() { # key value
    "$RAFTKV" --endpoints "$RAFTKV_ENDPOINTS" --timeout "$ATTEMPT_TIMEOUT" put "$1" "$2" >/dev/null 2>&1
}
etcd_put() { # key value
    etcdctl --endpoints "$ETCD_ENDPOINTS" --command-timeout="$ATTEMPT_TIMEOUT" --dial-timeout="$ATTEMPT_TIMEOUT" \
        put "$1" "$2" >/dev/null 2>&1
}

# Waits until every node names one leader, a write succeeds and the leader is still the same; sets LEADER, TERM.
wait_healthy() { # system
    local system="$1" deadline=$((SECONDS + READY_WAIT_SECONDS)) before after
    while [ $SECONDS -lt $deadline ]; do
        before=$("${system}_leader")
        if [ -n "$before" ] && "${system}_put" failover-health "$(now_ms)"; then
            after=$("${system}_leader")
            if [ "$after" = "$before" ]; then
                read -r LEADER TERM <<<"$after"
                return 0
            fi
        fi
        sleep "$HEALTH_POLL_SECONDS"
    done
    die "$system has no leader that every node names after ${READY_WAIT_SECONDS}s; see $WORK/$system-*.log"
}

# --- one round ---------------------------------------------------------------------------------------------
# Prints "MS ID TERM" once a survivor leads in a higher term, or "NA - -".
watch_new_leader() { # system survivors term fault-ms
    local deadline=$(($4 + FAILOVER_WAIT_SECONDS * 1000)) found now
    while :; do
        found=$("${1}_new_leader" "$2" "$3")
        now=$(now_ms)
        if [ -n "$found" ]; then echo "$((now - $4)) $found"; return 0; fi
        [ "$now" -lt "$deadline" ] || { echo "NA - -"; return 0; }
        sleep "$POLL_SECONDS"
    done
}

# Prints "MS ATTEMPTS" once a put is acknowledged, or "NA ATTEMPTS".
first_write() { # system fault-ms round
    local deadline=$(($2 + FAILOVER_WAIT_SECONDS * 1000)) attempts=0 now
    while :; do
        attempts=$((attempts + 1))
        if "${1}_put" "failover-round-$3" "$2"; then echo "$(($(now_ms) - $2)) $attempts"; return 0; fi
        now=$(now_ms)
        [ "$now" -lt "$deadline" ] || { echo "NA $attempts"; return 0; }
        sleep "$WRITE_RETRY_SECONDS"
    done
}

run_round() { # system fault round order
    local system="$1" fault="$2" round="$3" order="$4" leader term pid fault_ms watcher writer
    local leader_ms new_leader new_term write_ms attempts
    wait_healthy "$system"
    leader=$LEADER term=$TERM
    if [ "$fault" = kill ]; then
        if [ "$system" = raftkv ]; then pid=${RAFTKV_PIDS[$leader]}; else pid=${ETCD_PIDS[$leader]}; fi
        # Reaped at once, in braces, so bash's notice of a killed job goes nowhere rather than into the log.
        { kill -KILL "$pid"; fault_ms=$(now_ms); wait "$pid" || true; } 2>/dev/null
        # Reaped, its pid may be reused: the trap must not signal it.
        if [ "$system" = raftkv ]; then RAFTKV_PIDS[$leader]=""; else ETCD_PIDS[$leader]=""; fi
    else
        mesh "$system" isolate "$leader"
        fault_ms=$(now_ms)
    fi
    watch_new_leader "$system" "$(survivors "$system" "$leader")" "$term" "$fault_ms" >"$WORK/new-leader.txt" &
    watcher=$!
    first_write "$system" "$fault_ms" "$round" >"$WORK/first-write.txt" &
    writer=$!
    MEASURE_PIDS=("$watcher" "$writer")
    wait "$watcher" "$writer"
    MEASURE_PIDS=()
    read -r leader_ms new_leader new_term <"$WORK/new-leader.txt"
    read -r write_ms attempts <"$WORK/first-write.txt"

    if [ "$fault" = kill ]; then
        if [ "$system" = raftkv ]; then start_raftkv_node "$leader"; else start_etcd_member "$leader"; fi
    else
        mesh "$system" heal
    fi
    sleep "$SETTLE_SECONDS"
    wait_healthy "$system"

    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$system" "$fault" "$order" "$leader" \
        "$term" "$leader_ms" "$new_leader" "$new_term" "$write_ms" "$attempts" "$fault_ms" >>"$OUT/rounds.tsv"
    log "round $round $fault $system: leader $leader (term $term) -> $new_leader (term $new_term) after $leader_ms ms; first write after $write_ms ms ($attempts attempts)"
}

# --- the run -----------------------------------------------------------------------------------------------
{
    echo "nodes=$NODES"
    echo "rounds=$ROUNDS"
    echo "faults=${FAULTS[*]}"
    echo "systems=${SYSTEMS[*]}"
    echo "slow_ms=$SLOW_MS"
    echo "raftkv_election_timeout_max_ms=$ELECTION_MAX_MS"
    echo "failover_wait_seconds=$FAILOVER_WAIT_SECONDS"
    echo "attempt_timeout=$ATTEMPT_TIMEOUT"
    echo "raftkv_commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "etcd_version=$(etcd --version | sed -n 's/^etcd Version: //p')"
    echo "started=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$OUT/run.txt"
(IFS=$'\t'; echo "${ROUNDS_COLUMNS[*]}") >"$OUT/rounds.tsv"

for system in "${SYSTEMS[@]}"; do
    start_mesh "$system"
    for i in $IDS; do
        if [ "$system" = raftkv ]; then start_raftkv_node "$i"; else start_etcd_member "$i"; fi
    done
done
[[ " ${SYSTEMS[*]} " == *" etcd "* ]] && register_etcd_members
log "raftkv on $RAFTKV_ENDPOINTS, etcd on $ETCD_ENDPOINTS ($NODES nodes each, data in $WORK)"

for round in $(seq 1 "$ROUNDS"); do
    for fault in "${FAULTS[@]}"; do
        if [ $((round % 2)) -eq 1 ]; then order=(raftkv etcd); else order=(etcd raftkv); fi
        position=0
        for system in "${order[@]}"; do
            [[ " ${SYSTEMS[*]} " == *" $system "* ]] || continue
            position=$((position + 1))
            run_round "$system" "$fault" "$round" "$position"
        done
    done
done

report
