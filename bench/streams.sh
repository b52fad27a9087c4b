#!/usr/bin/env bash
# Herald event-stream benchmarks (results: docs/benchmarks.md, "Event streams over HTTP").
#
# Builds release binaries, then for each scenario starts a fresh `herald serve` on loopback
# ephemeral ports with a temporary data directory and a random HERALD_ADMIN_PASSWORD (so the
# server creates the user `admin` on its first start), runs `herald-bench streams-append`
# against its `--http` listener, scrapes the server's metrics and stops it. Scenarios:
#   own      64 clients, each appending 100-byte JSON events to a stream of its own, 10 s
#   shared   64 clients all appending to one stream, same load
# Target (the streams issue): 100,000 events/s with 64 clients.
#
# The measured runs use the server's default configuration (`--metrics off`). With DIAG=1 (the
# default) each scenario runs a second time on a fresh server with `--metrics 127.0.0.1:0`, and
# the script scrapes the topics' group-commit histograms (herald_topic_commit_seconds,
# herald_topic_commit_batch_events) after it. The second run's own result also shows what the
# metrics cost.
#
# Usage: bench/streams.sh                    # everything
#        SCENARIOS=own DURATION=5s bench/streams.sh
# Environment (defaults in brackets):
#   SCENARIOS [own shared]   DURATION [10s]   CLIENTS [64]   EVENT_BYTES [100]
#   OUT [a new /tmp/herald-streams.XXXXXX]   SKIP_BUILD [0]   DIAG [1]   PERF [0: 1 records
#   `perf record -g` of the server during the measured `own` run, if perf is installed]
#
# Safety: everything listens on 127.0.0.1 only, every run is bounded (`timeout`), and the
# servers this script starts are stopped on exit, Ctrl-C or error (trap). Nothing else is
# touched; the data directories live under $OUT.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCENARIOS=${SCENARIOS:-"own shared"}
DURATION=${DURATION:-10s}
CLIENTS=${CLIENTS:-64}
EVENT_BYTES=${EVENT_BYTES:-100}
SKIP_BUILD=${SKIP_BUILD:-0}
PERF=${PERF:-0}
DIAG=${DIAG:-1}
OUT=${OUT:-$(mktemp -d /tmp/herald-streams.XXXXXX)}
mkdir -p "$OUT"

# Upper bound for one herald-bench run: scenario time plus connecting and settling.
RUN_TIMEOUT=600
# The server creates `admin` with it on first start; herald-bench logs in with it (it reads
# the same variable). Random per run, never written to $OUT.
HERALD_ADMIN_PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
export HERALD_ADMIN_PASSWORD

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# start_server NAME METRICS: fresh data dir, ephemeral loopback ports, metrics listener METRICS
# (`off` or `127.0.0.1:0`); sets HTTP and METRICS (empty when off).
start_server() {
  local dir="$OUT/$1"
  rm -rf "$dir"
  mkdir -p "$dir"
  "$HERALD" serve --data-dir "$dir/data" \
    --icepeak off --http 127.0.0.1:0 --metrics "$2" \
    --ready-file "$dir/ready.json" >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  wait_ready "$dir"
  HTTP=$(field http "$dir/ready.json")
  METRICS=$(field metrics "$dir/ready.json" || true)
}

# metrics NAME: scrape once, keep the file, print the group-commit figures.
metrics() {
  local file="$OUT/$1/metrics.txt"
  curl -sf --max-time 10 "http://$METRICS/metrics" >"$file" || { echo "metrics scrape failed"; return; }
  awk '
    /^herald_topic_commit_seconds_sum/ { cs = $2 } /^herald_topic_commit_seconds_count/ { cc = $2 }
    /^herald_topic_commit_batch_events_sum/ { bs = $2 } /^herald_topic_commit_batch_events_count/ { bc = $2 }
    END {
      if (cc > 0) printf "  group commits: %d, mean commit (append+fsync) %.3f ms, mean batch %.1f events\n", cc, 1000 * cs / cc, bs / bc
    }' "$file"
  grep -E '^herald_topic_commit_(seconds|batch_events)\{quantile' "$file" | sed 's/^/  /' || true
}


build_release
machine

# append NAME SHARED METRICS: one streams-append run on a fresh server; SHARED is 1 for one
# shared stream.
append() {
  start_server "$1" "$3"
  local flags=()
  [[ "$2" == 1 ]] && flags+=(--shared-stream)
  log "$1: herald-bench streams-append --clients $CLIENTS --event-bytes $EVENT_BYTES --duration $DURATION ${flags[*]} (server --metrics $3)"
  if [[ "$PERF" == 1 && "$1" == own ]] && command -v perf >/dev/null; then
    perf record -F 499 -g -p "$SERVER_PID" -o "$OUT/$1/perf.data" >/dev/null 2>&1 &
    PERF_PID=$!
  fi
  bench streams-append --target "http://$HTTP" --clients "$CLIENTS" \
    --event-bytes "$EVENT_BYTES" --duration "$DURATION" "${flags[@]}" --pid "$SERVER_PID" \
    --json-out "$OUT/$1/result.json"
  [[ -n "$METRICS" ]] && metrics "$1"
  stop_server
}

for scenario in $SCENARIOS; do
  case "$scenario" in
    own | shared)
      shared=0
      [[ "$scenario" == shared ]] && shared=1
      append "$scenario" "$shared" off
      [[ "$DIAG" == 1 ]] && append "$scenario-metrics" "$shared" 127.0.0.1:0
      ;;
    *)
      echo "unknown scenario $scenario (known: own shared)" >&2
      exit 2
      ;;
  esac
done

log "summary (target: 100,000 events/s with 64 clients)"
summary() {
  local f="$OUT/$1/result.json"
  [[ -s "$f" ]] || return 0
  if command -v jq >/dev/null; then jq -r "$2" "$f"; else cat "$f"; fi
}
line='"\(.events_per_second | floor) events/s, p50 \((.latency.p50_us / 10 | round) / 100) ms, p99 \((.latency.p99_us / 10 | round) / 100) ms, errors \(.errors | length), reconnects \(.reconnects), acked \(.acked_total) / stored \(.stored_total)"'
summary own "\"  own streams:   \" + $line"
summary shared "\"  shared stream: \" + $line"
summary own-metrics "\"  (with --metrics on, own streams:   \" + $line + \")\""
summary shared-metrics "\"  (with --metrics on, shared stream: \" + $line + \")\""
echo "  files: $OUT"
