#!/usr/bin/env bash
# Topic creation beside idle subscribers (results: docs/benchmarks.md, "Topic creation beside
# idle subscribers").
#
# For each count in $IDLE this starts a fresh durable `herald serve` on free loopback ports
# (bench/mqtt-brokers.sh's start_herald), opens that many idle MQTT sessions, each subscribed
# to a topic of its own that nobody publishes to (`herald-bench mqtt-idle`, kept open meanwhile),
# then runs `herald-bench mqtt-publish --new-topics`: $PUBLISHERS QoS 1 publishers, $INFLIGHT
# publishes in flight each, every publish to a topic not used before, for $DURATION. The
# figure is acknowledged publishes/s, i.e. topics created (and committed) per second, with the
# server's CPU beside it. A broker whose topic creation wakes every subscriber slows down in
# proportion to the idle sessions; one that tells only the topic's own subscribers does not.
#
# Usage: bench/topic-churn.sh
#        IDLE="0 10000" DURATION=5s bench/topic-churn.sh
# Environment (defaults in brackets):
#   IDLE [0 10000]   PUBLISHERS [4]   INFLIGHT [16]   DURATION [5s]
#   OUT [a new /tmp/herald-churn.XXXXXX]   SKIP_BUILD [0]
#
# Safety: the server listens on 127.0.0.1 only, every run is bounded (`timeout`), and the
# server and the idle sessions are stopped on exit, Ctrl-C or error. Data directories live
# under $OUT; the password is random per run and never written.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IDLE=${IDLE:-"0 10000"}
PUBLISHERS=${PUBLISHERS:-4}
INFLIGHT=${INFLIGHT:-16}
DURATION=${DURATION:-5s}
SKIP_BUILD=${SKIP_BUILD:-0}
OUT=${OUT:-$(mktemp -d /tmp/herald-churn.XXXXXX)}
mkdir -p "$OUT"

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# HERALD and PASSWORD are read by start_herald (bench/mqtt-brokers.sh); BENCH and RUN_TIMEOUT
# by bench/lib.sh.
# shellcheck disable=SC2034
HERALD="$TARGET_DIR/release/herald"
# shellcheck disable=SC2034
BENCH="$TARGET_DIR/release/herald-bench"
# shellcheck disable=SC2034
RUN_TIMEOUT=300
# shellcheck disable=SC2034
PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
IDLE_PID=""

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
# shellcheck source=bench/mqtt-brokers.sh
source "$ROOT/bench/mqtt-brokers.sh"

stop_all() {
  if [[ -n "$IDLE_PID" ]]; then
    kill -INT "$IDLE_PID" 2>/dev/null || true
    wait "$IDLE_PID" 2>/dev/null || true
  fi
  IDLE_PID=""
  stop_server
}
trap stop_all EXIT
trap 'stop_all; exit 130' INT TERM

if [[ "$SKIP_BUILD" != 1 ]]; then
  log "cargo build --release -p herald -p herald-bench"
  (cd "$ROOT" && cargo build --release -p herald -p herald-bench)
fi
machine "ulimit: $(ulimit -n)"

for idle in $IDLE; do
  dir="$OUT/idle-$idle"
  rm -rf "$dir"
  mkdir -p "$dir"
  start_herald "$dir" 0
  if [[ "$idle" -gt 0 ]]; then
    log "$idle idle sessions: herald-bench mqtt-idle --connections $idle"
    timeout --signal=INT --kill-after=10 "$RUN_TIMEOUT" "$BENCH" mqtt-idle --addr "$ADDR" \
      --pid "$SERVER_PID" --connections "$idle" --prefix bench/idle --settle 120s \
      >"$dir/idle.txt" 2>&1 &
    IDLE_PID=$!
    # Established when the server holds that many more descriptors.
    base=$(find "/proc/$SERVER_PID/fd" -mindepth 1 | wc -l)
    for _ in $(seq 1200); do
      now=$(find "/proc/$SERVER_PID/fd" -mindepth 1 | wc -l)
      [[ $((now - base)) -ge "$idle" ]] && break
      kill -0 "$IDLE_PID" 2>/dev/null || { cat "$dir/idle.txt" >&2; exit 1; }
      sleep 0.1
    done
    sleep 1
  fi
  cmd=(mqtt-publish --addr "$ADDR" --new-topics --prefix bench/new --publishers "$PUBLISHERS"
    --inflight "$INFLIGHT" --qos 1 --duration "$DURATION")
  log "idle $idle (uptime: $(uptime)): herald-bench ${cmd[*]}"
  bench "${cmd[@]}" --pid "$SERVER_PID" --json-out "$dir/result.json" | tee "$dir/result.txt"
  stop_all
done

log "summary"
python3 - "$OUT" "$IDLE" <<'PY' | tee "$OUT/summary.md"
import json, sys

out, idles = sys.argv[1], sys.argv[2].split()
print("\n| idle sessions | topics created/s | ack p50 | ack p99 | server CPU (cores) | errors |")
print("|---|---|---|---|---|---|")
for idle in idles:
    r = json.load(open(f"{out}/idle-{idle}/result.json"))
    lat = r["ack_latency"]
    cpu = r.get("cpu") or {}
    print(f"| {int(idle):,} | {r['acked_per_second']:,.0f} | {lat['p50_us'] / 1000:.2f} ms | "
          f"{lat['p99_us'] / 1000:.2f} ms | {(cpu.get('server_cores') or float('nan')):.2f} | "
          f"{len(r['errors'])} |")
PY
