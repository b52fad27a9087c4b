#!/usr/bin/env bash
# hpfeeds broker benchmark: Herald against the reference Python broker (results:
# docs/benchmarks.md, "hpfeeds").
#
# For each broker and each scenario this starts a fresh broker on a loopback port, runs
# `herald-bench hpfeeds-fanout` against it and stops it. Brokers:
#   ref         the reference `hpfeeds-broker` (PyPI hpfeeds[broker], installed into a venv at
#               $REF_VENV if missing), JSON users file, stores nothing
#   herald      `herald serve --hpfeeds`, temporary data dir, identity from `herald hpfeeds add`;
#               the channel's topic is durable (the default)
#   herald-mem  the same with `[[retention]] pattern = "/hpfeeds/#" memory-only = true`, i.e.
#               like the reference broker nothing is written to disk
# Scenarios:
#   max      1 publisher as fast as possible, 10 subscribers, 1 KiB payloads, $DURATION
#   rate     1 publisher at $RATE, 10 subscribers, 1 KiB: latency below saturation
#   sensors  $SENSORS publishers at $SENSOR_RATE each, $SENSOR_SUBS subscribers, 1 KiB: loss
# Targets (hpfeeds issue): 1 publisher / 10 subscribers / 1 KiB: 20x the reference broker's
# messages/s delivered or more, and its p99; 1,000 concurrent sensors publishing without loss.
#
# Usage: bench/hpfeeds.sh
#        BROKERS="herald-mem" SCENARIOS=max DURATION=5s bench/hpfeeds.sh
# Environment (defaults in brackets):
#   BROKERS [ref herald herald-mem]   SCENARIOS [max rate sensors]   DURATION [10s]
#   RATE [1000/s]   SENSORS [1000]   SENSOR_RATE [10/s]   SENSOR_SUBS [3]   PAYLOAD [1024]
#   OUT [a new /tmp/herald-hpfeeds.XXXXXX]   SKIP_BUILD [0]   REF_VENV [/tmp/hpfeeds-ref-venv]
#
# Safety: every broker listens on 127.0.0.1 only, every run is bounded (`timeout`), and the
# brokers this script starts are stopped on exit, Ctrl-C or error (trap). The data directories
# and users files live under $OUT.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BROKERS=${BROKERS:-"ref herald herald-mem"}
SCENARIOS=${SCENARIOS:-"max rate sensors"}
DURATION=${DURATION:-10s}
RATE=${RATE:-1000/s}
SENSORS=${SENSORS:-1000}
SENSOR_RATE=${SENSOR_RATE:-10/s}
SENSOR_SUBS=${SENSOR_SUBS:-3}
PAYLOAD=${PAYLOAD:-1024}
SKIP_BUILD=${SKIP_BUILD:-0}
REF_VENV=${REF_VENV:-/tmp/hpfeeds-ref-venv}
OUT=${OUT:-$(mktemp -d /tmp/herald-hpfeeds.XXXXXX)}
mkdir -p "$OUT"

RUN_TIMEOUT=300
IDENT=bench
CHANNEL=bench
# Random per run, never written to $OUT except in the reference broker's users file.
HPFEEDS_BENCH_SECRET=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
export HPFEEDS_BENCH_SECRET

# 1,000 sensors are 1,000 sockets in each process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

install_ref() {
  if [[ ! -x "$REF_VENV/bin/hpfeeds-broker" ]]; then
    log "installing the reference broker into $REF_VENV"
    python3 -m venv "$REF_VENV"
    "$REF_VENV/bin/pip" install -q 'hpfeeds[broker]'
  fi
}

# start_ref DIR: sets TARGET.
start_ref() {
  local dir=$1 port
  cat >"$dir/users.json" <<EOF
{"$IDENT": {"owner": "$IDENT", "secret": "$HPFEEDS_BENCH_SECRET", "pubchans": ["$CHANNEL"], "subchans": ["$CHANNEL"]}}
EOF
  port=$(free_port)
  (cd "$dir" && exec "$REF_VENV/bin/hpfeeds-broker" --auth "$dir/users.json" \
    -e "tcp:port=$port:interface=127.0.0.1") >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      TARGET="127.0.0.1:$port"
      return
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "hpfeeds-broker exited before it listened; see $dir/server.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "hpfeeds-broker not listening after 30 s" >&2
  exit 1
}

# start_herald DIR MEMORY_ONLY: sets TARGET.
start_herald() {
  local dir=$1 config=()
  if [[ "$2" == 1 ]]; then
    printf '[[retention]]\npattern = "/hpfeeds/#"\nmemory-only = true\n' >"$dir/herald.toml"
    config=(--config "$dir/herald.toml")
  fi
  printf '%s\n' "$HPFEEDS_BENCH_SECRET" | "$HERALD" hpfeeds add "$IDENT" --secret-stdin \
    --pubchans "$CHANNEL" --subchans "$CHANNEL" --data-dir "$dir/data" >"$dir/add.log" 2>&1
  "$HERALD" serve --data-dir "$dir/data" "${config[@]}" --icepeak off --http 127.0.0.1:0 \
    --metrics off --hpfeeds 127.0.0.1:0 --ready-file "$dir/ready.json" >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  wait_ready "$dir"
  TARGET=$(field hpfeeds "$dir/ready.json")
}


build_release
[[ " $BROKERS " == *" ref "* ]] && install_ref
machine "ref:    hpfeeds $("$REF_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("hpfeeds"))' 2>/dev/null || echo '?'), $("$REF_VENV/bin/python" --version 2>&1)" \
  "ulimit: $(ulimit -n)"

for broker in $BROKERS; do
  for scenario in $SCENARIOS; do
    case "$scenario" in
      max) flags=(--publishers 1 --subscribers 10) ;;
      rate) flags=(--publishers 1 --subscribers 10 --rate "$RATE") ;;
      sensors) flags=(--publishers "$SENSORS" --subscribers "$SENSOR_SUBS" --rate "$SENSOR_RATE") ;;
      *) echo "unknown scenario $scenario (known: max rate sensors)" >&2; exit 2 ;;
    esac
    dir="$OUT/$broker-$scenario"
    rm -rf "$dir"
    mkdir -p "$dir"
    case "$broker" in
      ref) start_ref "$dir" ;;
      herald) start_herald "$dir" 0 ;;
      herald-mem) start_herald "$dir" 1 ;;
      *) echo "unknown broker $broker (known: ref herald herald-mem)" >&2; exit 2 ;;
    esac
    log "$broker $scenario: herald-bench hpfeeds-fanout --target $TARGET ${flags[*]} --payload-bytes $PAYLOAD --duration $DURATION"
    bench hpfeeds-fanout --target "$TARGET" --ident "$IDENT" --channel "$CHANNEL" "${flags[@]}" \
      --payload-bytes "$PAYLOAD" --duration "$DURATION" --pid "$SERVER_PID" \
      --json-out "$dir/result.json" || echo "  (run failed; see above)"
    stop_server
  done
done

log "summary"
for f in "$OUT"/*/result.json; do
  [[ -s "$f" ]] || continue
  name=$(basename "$(dirname "$f")")
  if command -v jq >/dev/null; then
    jq -r --arg n "$name" '"  \($n): \(.delivered_per_second | floor) delivered/s (published \(.published_per_second | floor)/s), p50 \((.latency.p50_us / 10 | round) / 100) ms, p99 \((.latency.p99_us / 10 | round) / 100) ms, lost \(.lost) of \(.published * .subscribers), errors \(.errors | length), cpu server \(.cpu.server_cores // "?") bench \(.cpu.bench_cores // "?") other \(.cpu.other_cores // "?")"' "$f"
  else
    echo "  $name: $(cat "$f")"
  fi
done
echo "  files: $OUT"
