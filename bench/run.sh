#!/usr/bin/env bash
# Rhizome vs the reference @logux/server 0.14.0: the same app, load generator and flags for both.
#
#   bench/run.sh                      # build rhizome (release), bench both servers, print a table
#   ONLY=rhizome bench/run.sh         # only one side (ONLY=reference for the other)
#
# Both servers run the same app: open auth, `counter/:id` open for subscribe and write, and `inc`
# resent to `counter/{id}`, with no `load` and no `process`
# (bench/rhizome-bench.toml and bench/reference-server.mjs).
# The load generator is `rhizome bench` (crates/rhizome-bench). It drives both servers.
#
# Scenarios (same flags for both servers):
#   a  1 connection, pipelined : --connections 1 --actions 100000 --batch 100 --window 5000 --channel own
#   b  8 connections           : --connections 8 --actions 50000  --batch 100 --window 5000 --channel own
#   c  fan-out to 7 subscribers: --connections 1 --actions 100000 --batch 100 --window 2000 --channel shared --subscribers 7
# Each scenario lasts at least about half a second on Rhizome: shorter runs (20,000 actions took
# 0.1-0.2 s) measured mostly the start of a run (connections, the first round trips) and varied
# by a third from run to run.
#   d  idle connections        : --idle 2000 --pid <server pid>
# After each scenario the script records the server's peak RSS (VmHWM, which only ever grows during
# one server run) and the CPU seconds the server used during that scenario.
# Each server process is started once per side and runs the scenarios in the order d, then
# a, b, c repeated REPEAT times (3 by default): the table shows the median run of each scenario
# (by actions/s; its latency and CPU with it) and every run's actions/s, since one run on a shared
# 2-CPU machine can be a third off.
#
# Environment (all optional):
#   ONLY=rhizome|reference    run one side only
#   SKIP_BUILD=1              don't run `cargo build --release -p rhizome` (the binary must exist)
#   RHIZOME_BIN=path          rhizome binary [target/release/rhizome]; it is also the load generator
#   RHIZOME_PORT=31339  REFERENCE_PORT=31338
#   ACTIONS_A=100000          actions in scenario a for rhizome
#   REF_ACTIONS_A=100000      actions in scenario a for the reference. Set 20000 if 100000 takes
#                             more than about 60 s there. The table notes it when it differs.
#   ACTIONS_B=50000           actions per connection in scenario b (both servers)
#   ACTIONS_C=100000          actions in scenario c (both servers)
#   REPEAT=3                  runs of each load scenario per server (the median is shown)
#   IDLE=2000                 connections in scenario d
#   BENCH_TIMEOUT=300         seconds before one bench command is killed (it then counts as FAIL)
#   PIN=1                     pin the server to CPU 0 and the generator to CPU 1 (taskset). Off by
#                             default, so both share all cores.
#   RHIZOME_LOG=warn          rhizome log filter during the run (the reference logger is a no-op)
#   OUT_DIR=dir               where logs and results.md go [a new mktemp -d]
#
# Needs: bash 4+, node >= 20.11 with interop/node_modules installed (`cd interop && npm ci`),
# cargo, timeout, and curl (optional: the readiness probe falls back to /dev/tcp without it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ONLY=${ONLY:-}
SKIP_BUILD=${SKIP_BUILD:-0}
RHIZOME_BIN=${RHIZOME_BIN:-$ROOT/target/release/rhizome}
RHIZOME_PORT=${RHIZOME_PORT:-31339}
REFERENCE_PORT=${REFERENCE_PORT:-31338}
ACTIONS_A=${ACTIONS_A:-100000}
REF_ACTIONS_A=${REF_ACTIONS_A:-100000}
ACTIONS_B=${ACTIONS_B:-50000}
ACTIONS_C=${ACTIONS_C:-100000}
REPEAT=${REPEAT:-3}
IDLE=${IDLE:-2000}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
PIN=${PIN:-0}
export RHIZOME_LOG=${RHIZOME_LOG:-warn}
OUT_DIR=${OUT_DIR:-$(mktemp -d -t rhizome-bench.XXXXXX)}
mkdir -p "$OUT_DIR"

case "$ONLY" in
  '') SIDES=(rhizome reference) ;;
  rhizome | reference) SIDES=("$ONLY") ;;
  *) echo "ONLY must be rhizome or reference, not '$ONLY'" >&2; exit 2 ;;
esac

SERVER_TASKSET=()
GEN_TASKSET=()
if [[ $PIN == 1 ]]; then
  SERVER_TASKSET=(taskset -c 0)
  GEN_TASKSET=(taskset -c 1)
fi

# 2000 idle connections need about 2 fds each on the client side and 1 each on the server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------- server lifecycle
SERVER_PID=''
DATA_DIR=''

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

stop_server() {
  stop_pid "$SERVER_PID"
  SERVER_PID=''
  if [[ -n $DATA_DIR ]]; then
    rm -rf -- "$DATA_DIR"
    DATA_DIR=''
  fi
}

cleanup() {
  local rc=$?
  stop_server
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_of() { if [[ $1 == rhizome ]]; then echo "$RHIZOME_PORT"; else echo "$REFERENCE_PORT"; fi; }

start_server() {
  local side=$1 port log
  port=$(port_of "$side")
  log="$OUT_DIR/$side-server.log"
  if probe "$port"; then
    echo "something already listens on 127.0.0.1:$port; stop it or set ${side^^}_PORT" >&2
    return 1
  fi
  if [[ $side == rhizome ]]; then
    DATA_DIR=$(mktemp -d -t rhizome-bench-data.XXXXXX)
    "${SERVER_TASKSET[@]}" "$RHIZOME_BIN" serve --config bench/rhizome-bench.toml \
      --listen "127.0.0.1:$port" --data-dir "$DATA_DIR" >"$log" 2>&1 &
  else
    NODE_ENV=production PORT=$port "${SERVER_TASKSET[@]}" node bench/reference-server.mjs >"$log" 2>&1 &
  fi
  SERVER_PID=$!
  wait_ready "$side" "$SERVER_PID" "$log" "$port"
}

# Peak RSS of the server so far, in MiB.
peak_rss_mib() {
  awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || true
}

# User+system CPU seconds used so far by the server.
cpu_secs() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  # Fields after "(comm) ": state is field 3, utime 14 and stime 15 of the full line.
  echo "${stat##*) }" | awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($12 + $13) / hz }'
}

# ---------------------------------------------------------------- results
declare -A R # R[side.scenario.metric] = value

# Pulls `key=<number>` out of a `bench:` line.
field() { sed -n "s|.*[[:space:]]$2=\([0-9.][0-9.]*\).*|\1|p" <<<"$1" | head -n1; }

run_scenario() {
  local side=$1 sc=$2
  shift 2
  local port url out log rc cpu0 cpu1 line
  port=$(port_of "$side")
  url="ws://127.0.0.1:$port"
  log="$OUT_DIR/$side-$sc.log"
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "# $side/$sc: server is not running; skipped"
    R[$side.$sc.status]='server died'
    return 0
  fi
  cpu0=$(cpu_secs "$SERVER_PID")
  echo "## $side ($sc): rhizome bench --url $url $*"
  rc=0
  timeout "$BENCH_TIMEOUT" "${GEN_TASKSET[@]}" "$RHIZOME_BIN" bench --url "$url" "$@" >"$log" 2>&1 || rc=$?
  cpu1=$(cpu_secs "$SERVER_PID")
  line=$(grep '^bench:' "$log" | tail -n1 || true)
  if [[ -n $line ]]; then echo "$line"; fi
  if [[ $rc -ne 0 || -z $line ]]; then
    if [[ $rc -eq 124 ]]; then R[$side.$sc.status]="timeout ${BENCH_TIMEOUT}s"; else R[$side.$sc.status]="FAIL (exit $rc)"; fi
    echo "# $side/$sc: ${R[$side.$sc.status]}; last output:"
    tail -n 5 "$log" | sed 's/^/#   /'
  fi
  if [[ -n $line ]]; then
    R[$side.$sc.actions_s]=$(field "$line" 'actions/s')
    R[$side.$sc.deliveries_s]=$(field "$line" 'deliveries/s')
    R[$side.$sc.p50_ms]=$(field "$line" p50_ms)
    R[$side.$sc.p99_ms]=$(field "$line" p99_ms)
    R[$side.$sc.kib_per_conn]=$(field "$line" kib_per_conn)
  fi
  R[$side.$sc.rss_mib]=$(peak_rss_mib "$SERVER_PID")
  if [[ -n $cpu0 && -n $cpu1 ]]; then
    R[$side.$sc.cpu_s]=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')
  fi
  echo "# $side/$sc: server peak RSS ${R[$side.$sc.rss_mib]:-?} MiB, server CPU ${R[$side.$sc.cpu_s]:-?} s"
  sleep 1 # let the server settle (close sockets, GC) before the next scenario
}

bench_side() {
  local side=$1 actions_a=$ACTIONS_A sc
  [[ $side == reference ]] && actions_a=$REF_ACTIONS_A
  R[$side.a.n]=$actions_a
  echo
  echo "# ---- $side"
  if ! start_server "$side"; then
    for sc in a b c d; do R[$side.$sc.status]='server did not start'; done
    return 0
  fi
  R[$side.pid]=$SERVER_PID
  # Idle connections first, on the fresh server: after the load scenarios, memory they freed
  # would be reused by the idle connections and hide what a connection costs.
  run_scenario "$side" d --idle "$IDLE" --pid "$SERVER_PID"
  local i
  for ((i = 1; i <= REPEAT; i++)); do
    run_scenario "$side" "a$i" --connections 1 --actions "$actions_a" --batch 100 --window 5000 --channel own
    run_scenario "$side" "b$i" --connections 8 --actions "$ACTIONS_B" --batch 100 --window 5000 --channel own
    run_scenario "$side" "c$i" --connections 1 --actions "$ACTIONS_C" --batch 100 --window 2000 --channel shared --subscribers 7
  done
  for sc in a b c; do median_run "$side" "$sc"; done
  stop_server
}

# R[side.sc.*] from the run of sc1..scREPEAT with the median actions/s; R[side.sc.runs] lists
# every run's actions/s; a failed run's status marks the scenario.
median_run() {
  local side=$1 sc=$2 i runs=() picked metric
  for ((i = 1; i <= REPEAT; i++)); do
    if [[ -n ${R[$side.$sc$i.status]:-} ]]; then R[$side.$sc.status]=${R[$side.$sc$i.status]}; fi
    if [[ -n ${R[$side.$sc$i.actions_s]:-} ]]; then runs+=("${R[$side.$sc$i.actions_s]} $i"); fi
  done
  ((${#runs[@]} > 0)) || return 0
  picked=$(printf '%s\n' "${runs[@]}" | sort -n | awk -v n="${#runs[@]}" 'NR == int((n + 1) / 2) { print $2 }')
  for metric in actions_s deliveries_s p50_ms p99_ms cpu_s rss_mib; do
    R[$side.$sc.$metric]=${R[$side.$sc$picked.$metric]:-}
  done
  R[$side.$sc.runs]=$(printf '%s\n' "${runs[@]}" | awk '{ printf "%s%s", (NR > 1 ? " / " : ""), $1 }')
}

# ---------------------------------------------------------------- build and header
if [[ $SKIP_BUILD != 1 ]]; then
  echo "# building: cargo build --release -p rhizome" >&2
  cargo build --release -p rhizome
fi
if [[ ! -x $RHIZOME_BIN ]]; then
  echo "no executable $RHIZOME_BIN (it is also the load generator)" >&2
  exit 1
fi
if [[ " ${SIDES[*]} " == *' reference '* && ! -f interop/node_modules/@logux/server/package.json ]]; then
  echo "interop/node_modules is missing: run (cd interop && npm ci)" >&2
  exit 1
fi

logux_version() {
  node -p "require('./interop/node_modules/@logux/server/package.json').version" 2>/dev/null || echo '?'
}

{
  echo "# Rhizome benchmark, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(awk '/^MemTotal:/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo), $(uname -sr)"
  echo "# rhizome: $("$RHIZOME_BIN" --version 2>/dev/null || echo '?') (commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(rustc --version 2>/dev/null || echo 'rustc ?'))"
  echo "# reference: @logux/server $(logux_version) on node $(node --version 2>/dev/null || echo '?'), NODE_ENV=production"
  echo "# load generator: $RHIZOME_BIN bench; server and generator on the same machine;" \
    "$([[ $PIN == 1 ]] && echo 'pinned: server CPU 0, generator CPU 1' || echo 'not pinned')"
  echo "# logs: $OUT_DIR"
} | tee "$OUT_DIR/header.txt"

for side in "${SIDES[@]}"; do
  bench_side "$side"
done

# ---------------------------------------------------------------- table
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a == "" || b == "" || b + 0 == 0) { print "n/a"; exit }
    printf "%.2f", a / b
  }'
}

cell() { # side scenario metric
  local v=${R[$1.$2.$3]:-}
  if [[ -n $v ]]; then echo "$v"; else echo "${R[$1.$2.status]:-—}"; fi
}

row() { # scenario label metric
  local sc=$1 label=$2 metric=$3 a b r
  a=$(cell rhizome "$sc" "$metric")
  b=$(cell reference "$sc" "$metric")
  r=$(ratio "${R[rhizome.$sc.$metric]:-}" "${R[reference.$sc.$metric]:-}")
  echo "| $label | $metric | $a | $b | $r |"
}

runs_row() { # scenario label
  echo "| $2 | actions_s, each run | ${R[rhizome.$1.runs]:-—} | ${R[reference.$1.runs]:-—} | |"
}

a_label="a: 1 conn pipelined, $ACTIONS_A actions"
if [[ $ACTIONS_A != "$REF_ACTIONS_A" ]]; then
  a_label="a: 1 conn pipelined, $ACTIONS_A actions (reference: $REF_ACTIONS_A)"
fi
b_label="b: 8 conns, own counters, 8×$ACTIONS_B actions"
c_label="c: fan-out, 1 producer → 7 subscribers, $ACTIONS_C actions"
d_label="d: $IDLE idle subscribed conns"

{
  echo
  cat "$OUT_DIR/header.txt"
  echo "# For actions/s and deliveries/s a ratio above 1 means Rhizome is faster."
  echo "# For latency, RSS and CPU a ratio below 1 means Rhizome is better."
  echo "# Load scenarios ran $REPEAT times each (a, b, c, a, b, c, ...); shown: the run with the median actions/s."
  echo "# rss_mib is peak RSS (VmHWM) after the scenario; it only grows, since each server runs d first, then the load scenarios."
  echo "# cpu_s is the server's user+system CPU during the scenario."
  echo
  echo '| scenario | metric | rhizome | reference | rhizome/reference |'
  echo '|---|---|---:|---:|---:|'
  for m in actions_s p50_ms p99_ms cpu_s rss_mib; do row a "$a_label" $m; done
  runs_row a "$a_label"
  for m in actions_s p50_ms p99_ms cpu_s rss_mib; do row b "$b_label" $m; done
  runs_row b "$b_label"
  for m in actions_s deliveries_s p50_ms p99_ms cpu_s rss_mib; do row c "$c_label" $m; done
  runs_row c "$c_label"
  for m in kib_per_conn rss_mib; do row d "$d_label" $m; done
} | tee "$OUT_DIR/results.md"
echo
echo "# results: $OUT_DIR/results.md"
