#!/usr/bin/env bash
# Herald document benchmarks (results: docs/benchmarks.md).
#
# Builds release binaries, then for each scenario starts a fresh `herald serve` on loopback
# ephemeral ports with a temporary data directory, runs `herald-bench` against it, scrapes the
# server's metrics and stops it. Scenarios (targets from issue 2):
#   put-icepeak  durable PUT via the Icepeak listener, 64 clients, 100-byte values, 10 s
#   put-main     durable PUT via the main API, same load
#   fanout       1,000 WebSocket subscribers on one path, 100 writes/s for 10 s
#   ws-idle      10,000 idle WebSocket subscribers, server RSS per connection
#
# The measured runs use the server's default configuration (`--metrics off`). With DIAG=1 (the
# default) put-icepeak, put-main and fanout run a second time on a fresh server with
# `--metrics 127.0.0.1:0`, and the script scrapes the group-commit histograms
# (herald_store_commit_seconds, herald_doc_commit_batch_size) after it: the figures that explain
# a miss. The second run's own result also shows what the metrics cost.
#
# Usage: bench/docs.sh                       # everything
#        SCENARIOS="put-icepeak fanout" bench/docs.sh
# Environment (defaults in brackets):
#   SCENARIOS [put-icepeak put-main fanout ws-idle]   DURATION [10s]   CLIENTS [64]
#   VALUE_BYTES [100]   SUBSCRIBERS [1000]   RATE [100/s]   CONNECTIONS [10000]
#   OUT [a new /tmp/herald-bench.XXXXXX]   SKIP_BUILD [0]   DIAG [1]   PERF [0: 1 records
#   `perf record -g` of the server during the measured put-icepeak run, if perf is installed]
#
# Safety: everything listens on 127.0.0.1 only, every run is bounded (`timeout`), and the
# servers this script starts are stopped on exit, Ctrl-C or error (trap). Nothing else is
# touched; the data directories live under $OUT.
#
# Limits: ws-idle needs `ulimit -n` above CONNECTIONS for both the server and herald-bench; the
# script raises the soft limit to the hard limit and stops with a clear message if that is
# still too low (raise the hard limit, e.g. `ulimit -Hn 65536` as root or in
# /etc/security/limits.conf, then re-run).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCENARIOS=${SCENARIOS:-"put-icepeak put-main fanout ws-idle"}
DURATION=${DURATION:-10s}
CLIENTS=${CLIENTS:-64}
VALUE_BYTES=${VALUE_BYTES:-100}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
RATE=${RATE:-100/s}
CONNECTIONS=${CONNECTIONS:-10000}
SKIP_BUILD=${SKIP_BUILD:-0}
PERF=${PERF:-0}
DIAG=${DIAG:-1}
OUT=${OUT:-$(mktemp -d /tmp/herald-bench.XXXXXX)}
mkdir -p "$OUT"

# Upper bound for one herald-bench run: scenario time plus connecting and settling.
RUN_TIMEOUT=600

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# start_server NAME METRICS: fresh data dir, ephemeral loopback ports, metrics listener METRICS
# (`off` or `127.0.0.1:0`); sets ICEPEAK, HTTP and METRICS (empty when off).
start_server() {
  local dir="$OUT/$1"
  rm -rf "$dir"
  mkdir -p "$dir"
  "$HERALD" serve --data-dir "$dir/data" \
    --icepeak 127.0.0.1:0 --http 127.0.0.1:0 --metrics "$2" \
    --ready-file "$dir/ready.json" >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  wait_ready "$dir"
  ICEPEAK=$(field icepeak "$dir/ready.json")
  HTTP=$(field http "$dir/ready.json")
  METRICS=$(field metrics "$dir/ready.json" || true)
}

# metrics NAME: scrape once, keep the file, print the group-commit figures.
metrics() {
  local file="$OUT/$1/metrics.txt"
  curl -sf --max-time 10 "http://$METRICS/metrics" >"$file" || { echo "metrics scrape failed"; return; }
  awk '
    /^herald_store_commit_seconds_sum/ { cs = $2 } /^herald_store_commit_seconds_count/ { cc = $2 }
    /^herald_doc_commit_batch_size_sum/ { bs = $2 } /^herald_doc_commit_batch_size_count/ { bc = $2 }
    /^herald_doc_commit_batch_size_bucket\{le="1"\}/ { b1 = $2 }
    /^icepeak_data_size_bytes/ { snap = $2 }
    END {
      if (cc > 0) printf "  group commits: %d, mean commit (append+fsync) %.3f ms, mean batch %.1f writes, batches of 1: %.0f %%\n", cc, 1000 * cs / cc, bs / bc, 100 * b1 / bc
      if (snap > 0) printf "  last snapshot: %.1f MiB\n", snap / 1048576
    }' "$file"
}


build_release
machine

# put NAME API METRICS: one docs-put run on a fresh server.
put() {
  start_server "$1" "$3"
  local target=$ICEPEAK
  [[ "$2" == main ]] && target=$HTTP
  log "$1: herald-bench docs-put --api $2 --clients $CLIENTS --value-bytes $VALUE_BYTES --duration $DURATION (server --metrics $3)"
  if [[ "$PERF" == 1 && "$1" == put-icepeak ]] && command -v perf >/dev/null; then
    perf record -F 499 -g -p "$SERVER_PID" -o "$OUT/$1/perf.data" >/dev/null 2>&1 &
    PERF_PID=$!
  fi
  bench docs-put --target "http://$target" --api "$2" --clients "$CLIENTS" \
    --value-bytes "$VALUE_BYTES" --duration "$DURATION" --pid "$SERVER_PID" \
    --json-out "$OUT/$1/result.json"
  [[ -n "$METRICS" ]] && metrics "$1"
  stop_server
}

# fanout NAME METRICS: one docs-fanout run on a fresh server.
fanout() {
  start_server "$1" "$2"
  log "$1: herald-bench docs-fanout --subscribers $SUBSCRIBERS --path /bench/x --rate $RATE --duration $DURATION (server --metrics $2)"
  bench docs-fanout --target "http://$ICEPEAK" --subscribers "$SUBSCRIBERS" --path /bench/x \
    --rate "$RATE" --duration "$DURATION" --pid "$SERVER_PID" \
    --json-out "$OUT/$1/result.json"
  [[ -n "$METRICS" ]] && metrics "$1"
  stop_server
}

for scenario in $SCENARIOS; do
  case "$scenario" in
    put-icepeak | put-main)
      api=${scenario#put-}
      put "$scenario" "$api" off
      [[ "$DIAG" == 1 ]] && put "$scenario-metrics" "$api" 127.0.0.1:0
      ;;
    fanout)
      fanout fanout off
      [[ "$DIAG" == 1 ]] && fanout fanout-metrics 127.0.0.1:0
      ;;
    ws-idle)
      needed=$((CONNECTIONS + 256))
      if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $needed ]]; then
        ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
      fi
      if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $needed ]]; then
        echo "ws-idle needs ulimit -n >= $needed (now $(ulimit -n), hard $(ulimit -Hn)); raise the hard limit and re-run" >&2
        exit 1
      fi
      start_server ws-idle off
      log "ws-idle: herald-bench ws-idle --connections $CONNECTIONS (ulimit -n $(ulimit -n))"
      bench ws-idle --target "http://$ICEPEAK" --connections "$CONNECTIONS" --pid "$SERVER_PID" \
        --json-out "$OUT/ws-idle/result.json"
      stop_server
      ;;
    *)
      echo "unknown scenario $scenario (known: put-icepeak put-main fanout ws-idle)" >&2
      exit 2
      ;;
  esac
done

log "summary (targets from issue 2)"
summary() {
  local f="$OUT/$1/result.json"
  [[ -s "$f" ]] || return 0
  if command -v jq >/dev/null; then jq -r "$2" "$f"; else cat "$f"; fi
}
summary put-icepeak '"  put icepeak: \(.writes_per_second | floor) writes/s (target >= 50000), p99 \(.latency.p99_us / 1000) ms"'
summary put-main '"  put main:    \(.writes_per_second | floor) writes/s (target >= 50000), p99 \(.latency.p99_us / 1000) ms"'
summary fanout '"  fanout:      p50 \(.latency.p50_us / 1000) ms, p99 \(.latency.p99_us / 1000) ms (target p99 < 5 ms), delivered \(.delivered)/\(.expected)"'
summary ws-idle '"  ws-idle:     \(.bytes_per_connection / 1024 * 10 | floor / 10) KiB per connection (target <= 8 KiB), \(.established) established"'
summary put-icepeak-metrics '"  (with --metrics on: put icepeak \(.writes_per_second | floor) writes/s)"'
summary put-main-metrics '"  (with --metrics on: put main \(.writes_per_second | floor) writes/s)"'
summary fanout-metrics '"  (with --metrics on: fanout p50 \(.latency.p50_us / 1000) ms, p99 \(.latency.p99_us / 1000) ms)"'
echo "  files: $OUT"
