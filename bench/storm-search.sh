#!/usr/bin/env bash
# The largest reconnect storm Rhizome survives on this machine: every client synced, nothing lost
# (each queued id processed in the server's log) and the online probes' p99 under P99_MAX_MS.
#
#   bench/storm-search.sh                         # clients x 1000 actions, from 500 clients up
#   START=2000 ACTIONS=100 bench/storm-search.sh  # shorter queues
#
# Each try is one bench/storm.sh run (a fresh server and fresh clients). The number of clients
# doubles from START until a try fails, then the gap between the last pass and the first failure
# is halved until it is at most STEP clients. One table row per try, then the verdict.
#
# Environment (all optional):
#   START=500  ACTIONS=1000  P99_MAX_MS=250  STEP=250  MAX=64000 (clients; the search stops there)
#   RETURN_WITHIN_MS=1000  RETURN_MODE=even  PROBES=10  SIM_NICE=0   passed to bench/storm.sh
#   SKIP_BUILD=1   don't build (the release binary must exist)
#   OUT_DIR=dir    one sub-directory per try with its result.json, chart.svg and server log
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

START=${START:-500}
ACTIONS=${ACTIONS:-1000}
P99_MAX_MS=${P99_MAX_MS:-250}
STEP=${STEP:-250}
MAX=${MAX:-64000}
OUT_DIR=${OUT_DIR:-$(mktemp -d -t rhizome-storm-search.XXXXXX)}
mkdir -p "$OUT_DIR"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  cargo build --release -p rhizome >&2
fi
export SKIP_BUILD=1
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The value of `key=` in a summary line.
field() { grep -o "\b$1=[^ ]*" <<<"$2" | head -1 | cut -d= -f2; }

printf '| clients | actions | synced | lost | not in log | probe p50 / p99 / max (ms) | all synced after (ms) | server CPU (ms) | sim CPU (ms) | verdict |\n'
printf '|---|---|---|---|---|---|---|---|---|---|\n'

# Runs a storm of $1 clients; prints its row; returns 0 when it passes.
try() {
  local clients=$1 dir="$OUT_DIR/c$1" rc=0 line
  mkdir -p "$dir"
  CLIENTS=$clients ACTIONS=$ACTIONS OUT_DIR=$dir bench/storm.sh >"$dir/storm.out" 2>&1 || rc=$?
  line=$(grep '^sim: clients=' "$dir/storm.out" | tail -1 || true)
  if [[ -z $line ]]; then
    printf '| %s | %s | - | - | - | - | - | - | - | FAIL (no report, exit %s; see %s) |\n' \
      "$clients" "$((clients * ACTIONS))" "$rc" "$dir/storm.out"
    return 1
  fi
  local p99 verdict=pass
  p99=$(field probe_p99_ms "$line")
  if [[ $rc != 0 ]]; then
    verdict="FAIL (exit $rc)"
  elif [[ -z $p99 || $p99 == - || $p99 -ge $P99_MAX_MS ]]; then
    verdict="FAIL (p99 >= $P99_MAX_MS ms)"
  fi
  printf '| %s | %s | %s | %s | %s | %s / %s / %s | %s | %s | %s | %s |\n' "$clients" "$((clients * ACTIONS))" \
    "$(field synced "$line")" "$(field lost "$line")" "$(field server_log_missing "$line")" \
    "$(field probe_p50_ms "$line")" "$p99" "$(field probe_max_ms "$line")" \
    "$(field time_to_sync_ms "$line")" "$(field server_cpu_ms "$line")" "$(field sim_cpu_ms "$line")" "$verdict"
  [[ $verdict == pass ]]
}

pass=0
fail=0
clients=$START
while ((clients <= MAX)); do
  if try "$clients"; then
    pass=$clients
    clients=$((clients * 2))
  else
    fail=$clients
    break
  fi
done
if ((fail > 0)); then
  while ((fail - pass > STEP)); do
    mid=$(((pass + fail) / 2))
    if try "$mid"; then pass=$mid; else fail=$mid; fi
  done
fi

echo
if ((pass == 0)); then
  echo "no storm passed; the smallest tried, $fail clients x $ACTIONS actions, failed (results in $OUT_DIR)"
  exit 1
fi
echo "largest storm passed: $pass clients x $ACTIONS actions = $((pass * ACTIONS)) actions," \
  "probe p99 under $P99_MAX_MS ms, nothing lost$( ((fail > 0)) && echo "; $fail clients failed")"
echo "results: $OUT_DIR"
