# Server lifecycle shared by the bench scripts (bench/run.sh, bench/storm.sh); sourced, not run.

# Stops process $1: TERM, up to 5 s to exit, then KILL.
stop_pid() {
  local pid=$1
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}

# Returns 0 when something answers GET /health on port $1 (or accepts TCP when curl is missing).
probe() {
  local port=$1
  if command -v curl >/dev/null; then
    curl -fsS -m 1 "http://127.0.0.1:$port/health" >/dev/null 2>&1
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
  fi
}

# Waits up to 30 s until server $1 (pid $2, log $3, port $4) printed its `listening` line and
# answers on its port; prints that line. On failure prints the log and returns 1.
wait_ready() {
  local name=$1 pid=$2 log=$3 port=$4
  for _ in $(seq 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name server exited during startup; log:" >&2
      cat "$log" >&2
      return 1
    fi
    if grep -q '^listening' "$log" && probe "$port"; then
      echo "# $name: $(grep -m1 '^listening' "$log") (pid $pid)"
      return 0
    fi
    sleep 0.1
  done
  echo "$name server not ready after 30 s; log:" >&2
  cat "$log" >&2
  return 1
}
