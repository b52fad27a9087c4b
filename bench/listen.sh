#!/usr/bin/env bash
# Stream listen API benchmark: Herald's `GET /listen` (IorioDB-compatible) over WebSocket and
# server-sent events (results: docs/benchmarks.md, "Listen API (WebSocket, SSE)").
#
# For each server kind and each scenario this starts a fresh `herald serve` on free loopback
# ports (bench/mqtt-brokers.sh's start_herald: temporary data dir, user `admin` from a random
# HERALD_ADMIN_PASSWORD, `--http` and `--mqtt` on 127.0.0.1:0), runs one `herald-bench listen-*`
# scenario against it (bounded by `timeout`) and stops it. Servers:
#   herald      durable topics (the default: every append is committed, group-commit fsync,
#               before any listener sees it)
#   herald-mem  the same with `[[retention]] pattern = "/bench/#" memory-only = true`: nothing
#               is written to disk
# Scenarios (the publishers are MQTT QoS 0 clients, as fast as a window of $WINDOW messages
# ahead of the slowest listener allows; payloads of $PAYLOAD bytes; $DURATION each):
#   fanout-ws        1 publisher, $SUBSCRIBERS WebSocket listeners on its stream
#   fanout-sse       the same over SSE
#   distinct-ws      $DISTINCT publishers, each on a stream of its own, $SUBSCRIBERS WebSocket
#                    listeners (listener j on stream j mod $DISTINCT)
#   distinct-sse     the same over SSE
#   idle-ws          $IDLE idle WebSocket listeners, one stream each: server RSS per connection
#   idle-sse         the same over SSE
#
# Usage: bench/listen.sh
#        SERVERS=herald-mem SCENARIOS="fanout-ws idle-ws" DURATION=5s bench/listen.sh
# Environment (defaults in brackets):
#   SERVERS [herald herald-mem]
#   SCENARIOS [fanout-ws fanout-sse distinct-ws distinct-sse idle-ws idle-sse]
#   DURATION [10s]   SUBSCRIBERS [100]   DISTINCT [100]   PAYLOAD [100]   WINDOW [100]
#   IDLE [10000]   OUT [a new /tmp/herald-listen.XXXXXX]   SKIP_BUILD [0]
#
# Safety: every server listens on 127.0.0.1 only, every run is bounded (`timeout`), and the
# servers this script starts are stopped on exit, Ctrl-C or error (trap, bench/lib.sh). Data
# directories and configs live under $OUT; the password is random per run and never written.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVERS=${SERVERS:-"herald herald-mem"}
SCENARIOS=${SCENARIOS:-"fanout-ws fanout-sse distinct-ws distinct-sse idle-ws idle-sse"}
DURATION=${DURATION:-10s}
SUBSCRIBERS=${SUBSCRIBERS:-100}
DISTINCT=${DISTINCT:-100}
PAYLOAD=${PAYLOAD:-100}
WINDOW=${WINDOW:-100}
IDLE=${IDLE:-10000}
SKIP_BUILD=${SKIP_BUILD:-0}
OUT=${OUT:-$(mktemp -d /tmp/herald-listen.XXXXXX)}
mkdir -p "$OUT"

# RUN_TIMEOUT is used by bench/lib.sh.
# shellcheck disable=SC2034
RUN_TIMEOUT=300
# Read by start_herald (bench/mqtt-brokers.sh) and passed to herald-bench in its environment.
PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

# 10,000 idle connections are 10,000 sockets in each process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
# shellcheck source=bench/mqtt-brokers.sh
source "$ROOT/bench/mqtt-brokers.sh"

build_release
machine "ulimit: $(ulimit -n)"

for server in $SERVERS; do
  for scenario in $SCENARIOS; do
    dir="$OUT/$server-$scenario"
    rm -rf "$dir"
    mkdir -p "$dir"
    case "$server" in
      herald) start_herald "$dir" 0 ;;
      herald-mem) start_herald "$dir" 1 ;;
      *) echo "unknown server $server (known: herald herald-mem)" >&2; exit 2 ;;
    esac
    fanout=(listen-fanout --target "http://$HTTP" --mqtt "$ADDR" --subscribers "$SUBSCRIBERS"
      --payload-bytes "$PAYLOAD" --window "$WINDOW" --duration "$DURATION" --qos 0)
    case "$scenario" in
      fanout-ws | fanout-sse) cmd=("${fanout[@]}" --publishers 1 --topics one) ;;
      distinct-ws | distinct-sse) cmd=("${fanout[@]}" --publishers "$DISTINCT" --topics distinct) ;;
      idle-ws | idle-sse) cmd=(listen-idle --target "http://$HTTP" --connections "$IDLE") ;;
      *) echo "unknown scenario $scenario (known: fanout-ws fanout-sse distinct-ws distinct-sse idle-ws idle-sse)" >&2; exit 2 ;;
    esac
    cmd+=(--transport "${scenario##*-}")
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "$load" >"$dir/result.load"
    log "$server $scenario (uptime: $(uptime)): herald-bench ${cmd[*]}"
    HERALD_ADMIN_PASSWORD=$PASSWORD bench "${cmd[@]}" --pid "$SERVER_PID" \
      --json-out "$dir/result.json" || echo "  (run failed; see above)"
    stop_server
  done
done
log "done (uptime: $(uptime))"

log "summary"
PYTHONPATH="$ROOT/bench" python3 - "$OUT" "$SERVERS" "$SCENARIOS" <<'EOF' | tee "$OUT/summary.md"
import sys

from benchfmt import cpu, load, ms, n

out, servers, scenarios = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
names = {"herald": "durable", "herald-mem": "memory-only"}

fanouts = [s for s in scenarios if not s.startswith("idle")]
idles = [s for s in scenarios if s.startswith("idle")]
if fanouts:
    print("\n| server | scenario | transport | pubs → subs | set-up/s | published/s | delivered/s | "
          "data/s | p50 | p90 | p99 | p99.9 | max | lost | errors | CPU server / bench / other | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in fanouts:
        for b in servers:
            r = load(out, b, s)
            if not r:
                print(f"| {names.get(b, b)} | {s} | | | failed | | | | | | | | | | | | |")
                continue
            l = r["latency"]
            print(f"| {names.get(b, b)} | {s} | {r['transport']} | {r['publishers']} → {r['subscribers']} | "
                  f"{n(r['setups_per_second'])} | {n(r['published_per_second'])} | "
                  f"{n(r['delivered_per_second'])} | {r['delivered_bytes_per_second'] / 1048576:.1f} MiB | "
                  f"{ms(l['p50_us'])} | {ms(l['p90_us'])} | {ms(l['p99_us'])} | {ms(l['p999_us'])} | "
                  f"{ms(l['max_us'])} | {n(r['lost'])} of {n(r['expected'])} | {len(r['errors'])} | "
                  f"{cpu(r)} | {r['_load']} |")
if idles:
    mib = lambda b: f"{b / 1048576:.1f} MiB"
    print("\n| server | transport | established | connect time | RSS before | RSS all open | "
          "KiB per connection | RSS after close | closed by server | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in idles:
        for b in servers:
            r = load(out, b, s)
            if not r:
                print(f"| {names.get(b, b)} | {s} | failed | | | | | | | |")
                continue
            print(f"| {names.get(b, b)} | {r['transport']} | {n(r['established'])} ({r['failed']} failed) | "
                  f"{r['connect_s']:.2f} s | {mib(r['rss_before'])} | {mib(r['rss_after'])} | "
                  f"{r['bytes_per_connection'] / 1024:.1f} | {mib(r['rss_after_close'])} | "
                  f"{r['closed_by_server']} | {r['_load']} |")
print(f"\nfiles: {out}")
EOF
