#!/usr/bin/env bash
# cluster.sh: run a local raftkv cluster on 127.0.0.1, with every peer link going through the partition
# proxy so that you can cut the network by hand. Thin wrapper over raftkv-server, raftkv and jepsen-lite.
#
#   scripts/cluster.sh up [N] [--tls]  build if needed, start N nodes (default 3), wait for a leader; --tls:
#                                      throwaway CA and node certificates in .cluster/tls/, mutual TLS
#                                      between nodes, clients need --ca .cluster/tls/ca.pem (or RAFTKV_CA)
#   scripts/cluster.sh down            stop everything it started (data is kept in .cluster/)
#   scripts/cluster.sh status          processes and `raftkv status`
#   scripts/cluster.sh kill ID         SIGKILL node ID          restart ID   start it again
#   scripts/cluster.sh pause ID        SIGSTOP node ID          resume ID    SIGCONT it
#   scripts/cluster.sh partition 1,2/3 cut the links between groups (one-way: see `jepsen-lite net --help`)
#   scripts/cluster.sh isolate ID      cut node ID off from every other node
#   scripts/cluster.sh cut A B         cut both links between nodes A and B
#   scripts/cluster.sh one-way A B     hold A's requests to B (B's replies still pass)
#   scripts/cluster.sh slow A B DELAY  delay link A->B by DELAY each way (e.g. 200ms)
#   scripts/cluster.sh heal            restore every link
#   scripts/cluster.sh ui [--listen ADDR]  serve the playground page for this cluster (default 127.0.0.1:7080)
#   scripts/cluster.sh logs ID [-f]    show (or follow) node ID's log
#
# Node i listens on 127.0.0.1:$((RAFTKV_BASE_PORT + i)) (default base 7000). The proxy for the link i->j
# listens on BASE+100 + 10*i + j; its control port is BASE+99. Node i serves Prometheus metrics on
# 127.0.0.1:BASE+200+i (/metrics). Processes are tracked by pid files in .cluster/ (with the size and the base
# port, which the playground reads), never by name. With --tls, the proxies relay the TLS bytes unchanged
# (peers verify the name raftkv-node, not the proxy address they dial).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="$ROOT/.cluster"
TLS_DIR="$STATE/tls"
BASE="${RAFTKV_BASE_PORT:-7000}"
PROXY_BASE=$((BASE + 100))
CONTROL="127.0.0.1:$((BASE + 99))"
BIN="$ROOT/target/release"
NODES_MAX=9
LEADER_WAIT_SECONDS=30
STOP_WAIT_SECONDS=15
UI_WAIT_TRIES=100

die() { echo "cluster.sh: $*" >&2; exit 2; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_count() { cat "$STATE/size" 2>/dev/null || echo 0; }

# The cluster runs with TLS when its CA is there (`up --tls` makes it, `up` without it removes it).
tls_on() { [ -f "$TLS_DIR/ca.pem" ]; }

# raftkv with the cluster's CA when it runs with TLS.
raftkv_cli() {
  if tls_on; then "$BIN/raftkv" --ca "$TLS_DIR/ca.pem" "$@"; else "$BIN/raftkv" "$@"; fi
}

endpoints() {
  local n; n=$(node_count); local list=()
  for i in $(seq 1 "$n"); do list+=("127.0.0.1:$((BASE + i))"); done
  (IFS=,; echo "${list[*]}")
}

build() {
  echo "building (release)..."
  (cd "$ROOT" && cargo build --release --quiet -p raftkv-server -p raftkv-client -p jepsen-lite)
}

start_node() {
  local i=$1 n; n=$(node_count)
  local initial=() routes=()
  for j in $(seq 1 "$n"); do
    initial+=("$j=127.0.0.1:$((BASE + j))")
    [ "$j" = "$i" ] || routes+=(--peer-route "$j=127.0.0.1:$((PROXY_BASE + 10 * i + j))")
  done
  local tls=()
  tls_on && tls=(--tls-cert "$TLS_DIR/node$i.pem" --tls-key "$TLS_DIR/node$i-key.pem" --tls-ca "$TLS_DIR/ca.pem")
  "$BIN/raftkv-server" --id "$i" --listen "127.0.0.1:$((BASE + i))" --data-dir "$STATE/node$i" \
    --metrics-listen "127.0.0.1:$((BASE + 200 + i))" --initial-cluster "$(IFS=,; echo "${initial[*]}")" "${routes[@]}" "${tls[@]}" >>"$STATE/node$i.log" 2>&1 &
  echo $! >"$STATE/node$i.pid"
}

wait_for_leader() {
  local deadline=$((SECONDS + LEADER_WAIT_SECONDS))
  while [ $SECONDS -lt $deadline ]; do
    if raftkv_cli --endpoints "$(endpoints)" --timeout 1s -w json status 2>/dev/null | grep -q '"role":"leader"'; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

cmd_up() {
  local n=3 tls=no
  for arg in "$@"; do
    case "$arg" in
      --tls) tls=yes ;;
      *) n=$arg ;;
    esac
  done
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le $NODES_MAX ] || die "up takes a node count from 1 to $NODES_MAX (and --tls)"
  mkdir -p "$STATE"
  for pidfile in "$STATE"/*.pid; do
    if alive "$pidfile"; then
      echo "a cluster is already running ($(node_count) nodes: $(endpoints)); 'scripts/cluster.sh down' first"
      return 0
    fi
  done
  if [ -f "$STATE/size" ] && [ "$(node_count)" != "$n" ]; then
    die ".cluster/ holds a $(node_count)-node cluster; 'up $(node_count)' reuses it, or remove .cluster/ for a new one"
  fi
  build
  echo "$n" >"$STATE/size"
  echo "$BASE" >"$STATE/base"
  if [ "$tls" = yes ]; then
    # Reuse the certificates of an earlier `up --tls` of this size, so clients keep trusting the same CA.
    if ! tls_on || [ ! -f "$TLS_DIR/node$n.pem" ]; then
      rm -rf "$TLS_DIR"
      "$BIN/jepsen-lite" certs --out "$TLS_DIR" --nodes "$n" >/dev/null
    fi
  else
    rm -rf "$TLS_DIR"
  fi
  local nodes=()
  for i in $(seq 1 "$n"); do nodes+=("$i=127.0.0.1:$((BASE + i))"); done
  "$BIN/jepsen-lite" net serve --nodes "$(IFS=,; echo "${nodes[*]}")" --base-port "$PROXY_BASE" \
    --control "$CONTROL" >"$STATE/proxy.log" 2>&1 &
  echo $! >"$STATE/proxy.pid"
  for i in $(seq 1 "$n"); do start_node "$i"; done
  if ! wait_for_leader; then
    echo "no leader after ${LEADER_WAIT_SECONDS}s; see 'scripts/cluster.sh logs 1'" >&2
    # A node that refused to start says why on the last line of its log (e.g. a data dir of an older
    # format: 'rm -rf .cluster' starts from scratch).
    for i in $(seq 1 "$n"); do
      alive "$STATE/node$i.pid" || echo "node $i exited: $(tail -n 1 "$STATE/node$i.log")" >&2
    done
    exit 1
  fi
  local ca_env="" mode="plaintext"
  if tls_on; then
    ca_env=" RAFTKV_CA=$TLS_DIR/ca.pem"
    mode="mutual TLS between nodes; clients trust $TLS_DIR/ca.pem (raftkv --ca FILE or RAFTKV_CA)"
  fi
  cat <<EOF
raftkv cluster up: $n nodes, endpoints $(endpoints), $mode

Try:
  export PATH="$BIN:\$PATH" RAFTKV_ENDPOINTS=$(endpoints)$ca_env
  raftkv put greeting hello && raftkv get greeting -w json
  raftkv status -w table
  curl -s 127.0.0.1:$((BASE + 201))/metrics | grep raftkv_   # node 1's metrics
  scripts/cluster.sh isolate 1      # then: raftkv get greeting --endpoint 127.0.0.1:$((BASE + 1)) --consistency stale
  scripts/cluster.sh heal
  scripts/cluster.sh down
EOF
}

stop_pidfile() {
  local pidfile=$1 signal=${2:-TERM}
  alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  local pid; pid=$(cat "$pidfile")
  kill -CONT "$pid" 2>/dev/null || true
  kill "-$signal" "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_WAIT_SECONDS))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

cmd_down() {
  [ -d "$STATE" ] || { echo "no cluster here"; return 0; }
  for pidfile in "$STATE"/node*.pid; do [ -e "$pidfile" ] && stop_pidfile "$pidfile"; done
  [ -e "$STATE/proxy.pid" ] && stop_pidfile "$STATE/proxy.pid"
  echo "cluster stopped; data kept in .cluster/ ('up' reuses it)"
}

check_id() {
  local id=${1:-}
  [[ "$id" =~ ^[0-9]+$ ]] && [ "$id" -ge 1 ] && [ "$id" -le "$(node_count)" ] || die "no node '$id' (nodes are 1..$(node_count))"
}

cmd_status() {
  local n; n=$(node_count)
  [ "$n" -gt 0 ] || { echo "no cluster here; 'scripts/cluster.sh up'"; return 0; }
  for i in $(seq 1 "$n"); do
    local pidfile="$STATE/node$i.pid" state="stopped"
    if alive "$pidfile"; then
      state="running (pid $(cat "$pidfile"))"
      grep -q '^T' <(ps -o stat= -p "$(cat "$pidfile")" 2>/dev/null) && state="paused (pid $(cat "$pidfile"))"
    fi
    echo "node $i: $state"
  done
  alive "$STATE/proxy.pid" && echo "proxy: running (pid $(cat "$STATE/proxy.pid"))" || echo "proxy: stopped"
  echo
  raftkv_cli --endpoints "$(endpoints)" --timeout 2s -w table status || true
}

net() { "$BIN/jepsen-lite" net "$@" --control "$CONTROL"; }

cmd_ui() {
  [ "$(node_count)" -gt 0 ] || die "no cluster here; 'scripts/cluster.sh up' first"
  local listen=127.0.0.1:7080
  if [ "${1:-}" = "--listen" ]; then
    [ -n "${2:-}" ] || die "ui --listen takes an address, e.g. 127.0.0.1:7080"
    listen=$2
  elif [ -n "${1:-}" ]; then
    die "ui takes only --listen ADDR"
  fi
  echo "the playground: http://$listen/ (Ctrl-C stops it; the cluster keeps running)"
  if command -v xdg-open >/dev/null; then
    # Open the browser once the page answers (bounded: UI_WAIT_TRIES x 0.1 s).
    (for _ in $(seq 1 "$UI_WAIT_TRIES"); do
       if (exec 3<>"/dev/tcp/${listen%:*}/${listen##*:}") 2>/dev/null; then
         xdg-open "http://$listen/" >/dev/null 2>&1 || true
         break
       fi
       sleep 0.1
     done) &
  fi
  exec "$BIN/jepsen-lite" ui --cluster-dir "$STATE" --listen "$listen"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kill) check_id "${2:-}"; stop_pidfile "$STATE/node$2.pid" KILL; echo "node $2 killed" ;;
  restart)
    check_id "${2:-}"
    alive "$STATE/node$2.pid" && die "node $2 is running"
    start_node "$2"; echo "node $2 started" ;;
  pause) check_id "${2:-}"; alive "$STATE/node$2.pid" || die "node $2 is not running"; kill -STOP "$(cat "$STATE/node$2.pid")"; echo "node $2 paused" ;;
  resume) check_id "${2:-}"; alive "$STATE/node$2.pid" || die "node $2 is not running"; kill -CONT "$(cat "$STATE/node$2.pid")"; echo "node $2 resumed" ;;
  partition) [ -n "${2:-}" ] || die "partition takes groups, e.g. 1,2/3"; net partition "$2" ;;
  isolate) check_id "${2:-}"; net isolate "$2" ;;
  cut) check_id "${2:-}"; check_id "${3:-}"; net cut "$2" "$3" ;;
  one-way) check_id "${2:-}"; check_id "${3:-}"; net one-way "$2" "$3" ;;
  slow)
    check_id "${2:-}"; check_id "${3:-}"; [ -n "${4:-}" ] || die "slow takes A B DELAY, e.g. 1 2 200ms"
    net delay "$4" --link "$2-$3" ;;
  heal) net heal ;;
  ui) shift; cmd_ui "$@" ;;
  logs)
    check_id "${2:-}"
    if [ "${3:-}" = "-f" ]; then tail -f "$STATE/node$2.log"; else tail -n 100 "$STATE/node$2.log"; fi ;;
  ""|-h|--help|help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command '$1'; see 'scripts/cluster.sh help'" ;;
esac
