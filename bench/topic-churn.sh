#!/usr/bin/env bash
# Many topics: topic creation beside idle subscribers, wildcard subscriptions and retention
# beside many topics (results: docs/benchmarks.md, "Topic creation beside idle subscribers",
# "Wildcard subscriptions beside many topics", "Retention beside many idle topics").
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
# Then (unless MANY=0) one more durable server, with `[[retention]] pattern = "/bench/#"
# max-events = 10`: bench/subscribe_timer.py times $SUBSCRIBES wildcard SUBSCRIBEs (filters
# `dev/<i>/+/cmd`, matching nothing) on the empty server, the same publishers create topics
# for $DURATION (32-byte payloads), the SUBSCRIBEs are timed again, and after 5 s the server's
# CPU time over 10 s of idling is read from /proc (what its retention pass costs with that
# many bounded topics and nothing to trim).
#
# Usage: bench/topic-churn.sh
#        IDLE="0 10000" DURATION=5s bench/topic-churn.sh
# Environment (defaults in brackets):
#   IDLE [0 10000]   PUBLISHERS [4]   INFLIGHT [16]   DURATION [5s]   MANY [1]
#   SUBSCRIBES [50]
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
MANY=${MANY:-1}
SUBSCRIBES=${SUBSCRIBES:-50}
SKIP_BUILD=${SKIP_BUILD:-0}
OUT=${OUT:-$(mktemp -d /tmp/herald-churn.XXXXXX)}
mkdir -p "$OUT"

# PASSWORD is read by start_herald (bench/mqtt-brokers.sh), RUN_TIMEOUT by bench/lib.sh.
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

build_release
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

cpu_ms() { awk '{ print ($14 + $15) * 10 }' "/proc/$1/stat"; }

if [[ "$MANY" == 1 ]]; then
  dir="$OUT/many"
  rm -rf "$dir"
  mkdir -p "$dir"
  printf '[[retention]]\npattern = "/bench/#"\nmax-events = 10\n' >"$dir/herald.toml"
  HERALD_ADMIN_PASSWORD=$PASSWORD "$HERALD" serve --data-dir "$dir/data" \
    --config "$dir/herald.toml" --mqtt 127.0.0.1:0 --http 127.0.0.1:0 --icepeak off \
    --hpfeeds off --metrics off --ready-file "$dir/ready.json" >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  wait_ready "$dir"
  ADDR=$(field mqtt "$dir/ready.json")
  export MQTT_BENCH_USERNAME=admin MQTT_BENCH_PASSWORD=$PASSWORD
  log "many topics: $SUBSCRIBES wildcard SUBSCRIBEs on the empty server"
  timeout 120 python3 "$ROOT/bench/subscribe_timer.py" "$ADDR" "$SUBSCRIBES" | tee "$dir/subscribe-empty.json"
  cmd=(mqtt-publish --addr "$ADDR" --new-topics --prefix bench/new --publishers "$PUBLISHERS"
    --inflight "$INFLIGHT" --qos 1 --payload-bytes 32 --duration "$DURATION")
  log "many topics (uptime: $(uptime)): herald-bench ${cmd[*]}"
  bench "${cmd[@]}" --pid "$SERVER_PID" --json-out "$dir/result.json" | tee "$dir/result.txt"
  log "many topics: $SUBSCRIBES wildcard SUBSCRIBEs again"
  timeout 120 python3 "$ROOT/bench/subscribe_timer.py" "$ADDR" "$SUBSCRIBES" | tee "$dir/subscribe-many.json"
  sleep 5
  before=$(cpu_ms "$SERVER_PID")
  sleep 10
  echo "$(($(cpu_ms "$SERVER_PID") - before))" | tee "$dir/idle-cpu-ms.txt"
  stop_all
fi

log "summary"
python3 - "$OUT" "$IDLE" "$MANY" <<'PY' | tee "$OUT/summary.md"
import json, sys

out, idles, many = sys.argv[1], sys.argv[2].split(), sys.argv[3] == "1"
print("\n| idle sessions | topics created/s | ack p50 | ack p99 | server CPU (cores) | errors |")
print("|---|---|---|---|---|---|")
for idle in idles:
    r = json.load(open(f"{out}/idle-{idle}/result.json"))
    lat = r["ack_latency"]
    cpu = r.get("cpu") or {}
    print(f"| {int(idle):,} | {r['acked_per_second']:,.0f} | {lat['p50_us'] / 1000:.2f} ms | "
          f"{lat['p99_us'] / 1000:.2f} ms | {(cpu.get('server_cores') or float('nan')):.2f} | "
          f"{len(r['errors'])} |")
if many:
    r = json.load(open(f"{out}/many/result.json"))
    empty = json.load(open(f"{out}/many/subscribe-empty.json"))
    full = json.load(open(f"{out}/many/subscribe-many.json"))
    idle_ms = int(open(f"{out}/many/idle-cpu-ms.txt").read())
    print("\n| topics | wildcard SUBACK median / max, empty | the same with the topics | "
          "idle server CPU over 10 s |")
    print("|---|---|---|---|")
    print(f"| {r['acked']:,} | {empty['median_ms']:.2f} / {empty['max_ms']:.2f} ms | "
          f"{full['median_ms']:.2f} / {full['max_ms']:.2f} ms | {idle_ms} ms |")
PY
