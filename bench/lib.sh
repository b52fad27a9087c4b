# Helpers shared by the benchmark scripts (bench/*.sh), which source this file after setting
# ROOT, OUT, RUN_TIMEOUT and SKIP_BUILD (for build_release). It sets HERALD and BENCH, the
# release binaries build_release builds (under CARGO_TARGET_DIR when that is set, as cargo
# does), and installs traps that stop the server in SERVER_PID (and a `perf record` in
# PERF_PID) on exit, Ctrl-C or error.
# shellcheck shell=bash

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# shellcheck disable=SC2034  # read by the sourcing scripts and bench/mqtt-brokers.sh
HERALD="$TARGET_DIR/release/herald"
BENCH="$TARGET_DIR/release/herald-bench"

SERVER_PID=""
PERF_PID=""

log() { printf '\n== %s\n' "$*"; }

stop_server() {
  if [[ -n "$PERF_PID" ]] && kill -0 "$PERF_PID" 2>/dev/null; then
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
  fi
  PERF_PID=""
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    # SIGTERM: drain, final snapshot, exit. Give it 30 s, then force.
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 300); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "server $SERVER_PID did not stop in 30 s; killing it" >&2
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# free_port: prints a loopback TCP port that was free a moment ago.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# field NAME FILE: the value of "NAME":"..." in a one-line JSON file.
field() { grep -o "\"$1\":\"[^\"]*\"" "$2" | cut -d'"' -f4; }

# wait_ready DIR: waits (30 s at most) until the herald in SERVER_PID has written
# DIR/ready.json; exits the script if it dies or is late.
wait_ready() {
  local dir=$1
  for _ in $(seq 300); do
    [[ -s "$dir/ready.json" ]] && return
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "herald exited before it was ready; see $dir/server.log" >&2
      tail -5 "$dir/server.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "herald not ready after 30 s" >&2
  exit 1
}

bench() { timeout --signal=INT --kill-after=10 "$RUN_TIMEOUT" "$BENCH" "$@"; }

# build_release: builds herald and herald-bench in release mode, unless SKIP_BUILD=1.
build_release() {
  if [[ "$SKIP_BUILD" != 1 ]]; then
    log "cargo build --release -p herald -p herald-bench"
    (cd "$ROOT" && cargo build --release -p herald -p herald-bench)
  fi
}

# machine [LINE...]: what the runs ran on; extra LINEs ("name: value") are printed too.
# shellcheck disable=SC2120
machine() {
  log "machine"
  echo "  nproc:  $(nproc)"
  echo "  cpu:    $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "  kernel: $(uname -r)"
  echo "  load:   $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, before the runs)"
  echo "  commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  local line
  for line in "$@"; do
    echo "  $line"
  done
  echo "  output: $OUT"
}
