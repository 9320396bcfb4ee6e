#!/usr/bin/env bash
# A reconnect storm (`rhizome sim`) against one server that this script starts and stops.
#
#   bench/storm.sh                          # scenario S1 against rhizome (release build)
#   SERVER=reference bench/storm.sh         # the same storm against @logux/server 0.14.0
#   CLIENTS=50 ACTIONS=100 bench/storm.sh   # a small storm
#
# Both servers run the benchmark's app (bench/rhizome-bench.toml, bench/reference-server.mjs).
# The reference keeps no log, so it runs without --server-db and its report says the server's
# log was not checked; it has no crdt/* types, so CRDT_SHARE must stay 0 against it.
#
# Environment (all optional; the defaults are scenario S1 of the README):
#   SERVER=rhizome|reference   [rhizome]
#   CLIENTS=1000  ACTIONS=1000  RETURN_WITHIN_MS=1000  RETURN_MODE=even|burst|ramp  PROBES=10
#   CRDT_SHARE=0  OBJECTS=0 (CRDT objects shared by the clients; 0: one per client)
#   TIMEOUT_SECS=600
#   PORT                       [31337 for rhizome, 31338 for the reference]
#   SKIP_BUILD=1               don't run `cargo build --release -p rhizome` (the binary must exist)
#   RHIZOME_BIN=path           the rhizome binary, server and simulator [target/release/rhizome]
#   RHIZOME_LOG=warn           rhizome's log filter
#   RHIZOME_ARGS=              more arguments for `rhizome serve` (e.g. `--workers 2`)
#   OUT_DIR=dir                result.json, chart.svg and the server's log [a new mktemp -d]
#   CLIENT_DIR=dir             an empty directory for the clients' SQLite files [a new one under
#                              /dev/shm when it exists, so their writes do not compete with the
#                              server's fsyncs, removed afterwards]
#   SIM_NICE=0                 run the simulator at this nice level: 10 gives the server the CPU
#                              first, as if the clients ran on other machines (the report still
#                              gives the simulator's own CPU time)
#   KEEP_DATA=1                keep the new clients' directory and rhizome's data directory
#
# Exits with rhizome sim's status: non-zero when an action was lost or a client did not sync.
# Needs bash 4+, curl, and for the reference node >= 20.11 with interop/node_modules installed
# (`cd interop && npm ci`).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SERVER=${SERVER:-rhizome}
CLIENTS=${CLIENTS:-1000}
ACTIONS=${ACTIONS:-1000}
RETURN_WITHIN_MS=${RETURN_WITHIN_MS:-1000}
RETURN_MODE=${RETURN_MODE:-even}
PROBES=${PROBES:-10}
CRDT_SHARE=${CRDT_SHARE:-0}
TIMEOUT_SECS=${TIMEOUT_SECS:-600}
SKIP_BUILD=${SKIP_BUILD:-0}
RHIZOME_BIN=${RHIZOME_BIN:-$ROOT/target/release/rhizome}
KEEP_DATA=${KEEP_DATA:-0}
export RHIZOME_LOG=${RHIZOME_LOG:-warn}
OUT_DIR=${OUT_DIR:-$(mktemp -d -t rhizome-storm.XXXXXX)}
mkdir -p "$OUT_DIR"

case "$SERVER" in
  rhizome) PORT=${PORT:-31337} ;;
  reference)
    PORT=${PORT:-31338}
    if [[ $CRDT_SHARE != 0 ]]; then
      echo "the reference app has no crdt/* types: CRDT_SHARE must be 0" >&2
      exit 2
    fi
    ;;
  *) echo "SERVER must be rhizome or reference, not '$SERVER'" >&2; exit 2 ;;
esac

if [[ $SKIP_BUILD != 1 ]]; then
  cargo build --release -p rhizome
fi
if [[ ! -x $RHIZOME_BIN ]]; then
  echo "no rhizome binary at $RHIZOME_BIN" >&2
  exit 2
fi

# Every client holds a socket and a SQLite file.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Only directories made here are removed afterwards.
MADE_DIRS=()
if [[ -z ${CLIENT_DIR:-} ]]; then
  if [[ -d /dev/shm ]]; then
    CLIENT_DIR=$(mktemp -d /dev/shm/rhizome-storm-clients.XXXXXX)
  else
    CLIENT_DIR=$(mktemp -d "$OUT_DIR/clients.XXXXXX")
  fi
  MADE_DIRS+=("$CLIENT_DIR")
elif [[ -n $(ls -A "$CLIENT_DIR" 2>/dev/null) ]]; then
  echo "CLIENT_DIR $CLIENT_DIR is not empty: the clients would reopen old logs" >&2
  exit 2
fi
DATA_DIR=$(mktemp -d "$OUT_DIR/server-data.XXXXXX")
MADE_DIRS+=("$DATA_DIR")
SERVER_LOG=$OUT_DIR/$SERVER-server.log
SERVER_PID=''

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

stop_server() {
  stop_pid "$SERVER_PID"
  SERVER_PID=''
}

cleanup() {
  local rc=$?
  stop_server
  if [[ $KEEP_DATA != 1 ]]; then
    rm -rf -- "${MADE_DIRS[@]}"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if probe "$PORT"; then
  echo "something already listens on 127.0.0.1:$PORT; stop it or set PORT" >&2
  exit 1
fi

if [[ $SERVER == rhizome ]]; then
  # shellcheck disable=SC2086 # RHIZOME_ARGS is split into arguments on purpose
  "$RHIZOME_BIN" serve --config bench/rhizome-bench.toml --listen "127.0.0.1:$PORT" \
    --data-dir "$DATA_DIR" ${RHIZOME_ARGS:-} >"$SERVER_LOG" 2>&1 &
  SERVER_DB=(--server-db "$DATA_DIR/rhizome.db")
else
  NODE_ENV=production PORT=$PORT node bench/reference-server.mjs >"$SERVER_LOG" 2>&1 &
  SERVER_DB=()
fi
SERVER_PID=$!

wait_ready "$SERVER" "$SERVER_PID" "$SERVER_LOG" "$PORT" || exit 1

SIM_NICE=${SIM_NICE:-0}
SIM=(nice -n "$SIM_NICE" "$RHIZOME_BIN" sim --url "ws://127.0.0.1:$PORT" --clients "$CLIENTS" --actions-per-client "$ACTIONS"
  --return-within-ms "$RETURN_WITHIN_MS" --return-mode "$RETURN_MODE" --probes "$PROBES"
  --crdt-share "$CRDT_SHARE" --objects "${OBJECTS:-0}" --timeout-secs "$TIMEOUT_SECS" --pid "$SERVER_PID" "${SERVER_DB[@]}"
  --data-dir "$CLIENT_DIR" --out "$OUT_DIR/result.json" --chart "$OUT_DIR/chart.svg")
echo "# ${SIM[*]}"
rc=0
"${SIM[@]}" || rc=$?
stop_server
echo "# result: $OUT_DIR/result.json  chart: $OUT_DIR/chart.svg  server log: $SERVER_LOG"
exit "$rc"
