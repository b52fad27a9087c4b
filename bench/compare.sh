#!/usr/bin/env bash
# Side by side: Herald, Mosquitto and nats-server, same MQTT load generator, same machine
# (results: docs/benchmarks.md, "Side by side: Herald, Mosquitto, NATS", and docs/bench/).
#
# Installs the peers from Debian when missing (mosquitto via scripts/setup-mqtt-tools.sh,
# nats-server with apt-get and a policy-rc.d that keeps its service from starting), then for
# each broker and each scenario starts a fresh broker on free loopback ports, runs one
# `herald-bench mqtt-*` scenario against it (bounded by `timeout`) and stops it. Every run
# leaves its JSON, its command line, the load average and the CPU use of other processes in
# $OUT/<broker>-<scenario>/. At the end bench/chart.py writes the tables to
# docs/bench/compare.md (and stdout) and the chart to docs/bench/compare.png.
#
# Brokers (BROKERS):
#   herald      `herald serve --mqtt`, temporary data dir, user `admin` from
#               HERALD_ADMIN_PASSWORD; topics are durable (the default: a QoS 1 PUBACK means
#               committed, group-commit fsync)
#   herald-mem  the same with `[[retention]] pattern = "/bench/#" memory-only = true`
#   mosquitto   Debian's mosquitto, the configuration of bench/mqtt.sh: password file, no
#               persistence, max_inflight_messages 256, max_queued_messages 100000, Nagle on
#   nats        Debian's nats-server: server_name, JetStream (file store under the run dir;
#               needed by its MQTT listener), MQTT and WebSocket (no TLS) listeners, one
#               user/password. Its QoS 0 is core NATS; QoS 1 goes through JetStream
# Scenarios (SCENARIOS), 100-byte payloads, MQTT $PROTOCOL, QoS 0 unless said otherwise:
#   fanout100   1 publisher, 100 subscribers on one topic, as fast as a window of $WINDOW
#               messages ahead of the slowest subscriber allows, $DURATION
#   fanout1000  the same with 1,000 subscribers
#   distinct    100 publishers, 100 subscribers, publisher i on bench/t/<i>, subscriber j on
#               bench/t/<j mod 100>, each publisher window-bounded as above
#   publish     QoS 1: $PUBLISHERS publishers, $INFLIGHT unacknowledged each, own topic each
#   idle10k     10,000 idle connections, one QoS 0 subscription each: broker RSS per connection
#   idle50k     the same with 50,000 (client sockets spread over 127.0.0.1..127.0.0.4); needs
#               an open-files limit above 50,512 (raised by this script where the hard limit
#               allows or as root with CAP_SYS_RESOURCE), else runs as many as the limit allows
#               and notes it in the table
#   half        fanout100 twice on one broker: first as fast as allowed (the maximum), then at
#               a fixed --rate of HALF_PERCENT (50) % of the publish rate just measured; the
#               latency at that load is the figure
# Targets (performance issue): fan-out delivered/s >= 2x Mosquitto and >= nats-server in every
# fan-out scenario; p99 publish-to-deliver < 1 ms at 50 % load; <= 4 KiB of RSS per idle
# connection with one subscription; no loss of what the protocol promised.
#
# Usage: bench/compare.sh
#        BROKERS="herald-mem nats" SCENARIOS="fanout100 half" DURATION=5s bench/compare.sh
# Environment (defaults in brackets):
#   BROKERS [herald herald-mem mosquitto nats]
#   SCENARIOS [fanout100 fanout1000 distinct publish idle10k idle50k half]
#   DURATION [10s]   PAYLOAD [100]   WINDOW [100]   PUBLISHERS [50]   INFLIGHT [16]
#   HALF_PERCENT [50]   PROTOCOL [3.1.1]   OUT [a new /tmp/herald-compare.XXXXXX]
#   DOCS [docs/bench: where compare.md and compare.png go; empty: only $OUT]
#   SKIP_BUILD [0]   SKIP_INSTALL [0]   KEEP_DATA [0: broker data dirs are deleted after each run]
#
# Safety: every broker listens on 127.0.0.1 only, every run is bounded (`timeout`), the
# brokers this script starts are stopped on exit, Ctrl-C or error (trap, bench/lib.sh), and
# their data directories (Herald's store, JetStream's) live under $OUT and are deleted after
# each run unless KEEP_DATA=1. matplotlib, when missing, goes into a venv under /tmp.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BROKERS=${BROKERS:-"herald herald-mem mosquitto nats"}
SCENARIOS=${SCENARIOS:-"fanout100 fanout1000 distinct publish idle10k idle50k half"}
DURATION=${DURATION:-10s}
PAYLOAD=${PAYLOAD:-100}
WINDOW=${WINDOW:-100}
PUBLISHERS=${PUBLISHERS:-50}
INFLIGHT=${INFLIGHT:-16}
HALF_PERCENT=${HALF_PERCENT:-50}
PROTOCOL=${PROTOCOL:-3.1.1}
SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_INSTALL=${SKIP_INSTALL:-0}
KEEP_DATA=${KEEP_DATA:-0}
DOCS=${DOCS-$ROOT/docs/bench}
OUT=${OUT:-$(mktemp -d /tmp/herald-compare.XXXXXX)}
VENV=${VENV:-/tmp/herald-bench-venv}
mkdir -p "$OUT"

# RUN_TIMEOUT is used by bench/lib.sh.
RUN_TIMEOUT=300
# Random per run; written to $OUT only in the brokers' configs (Mosquitto's hashed).
PASSWORD=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
PATH="$PATH:/usr/sbin:/sbin"

# 50,000 idle connections are 50,000 sockets in the broker and 50,000 in herald-bench: raise
# the soft and, as root, the hard limit; else take what the hard limit allows.
ulimit -n 120000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# shellcheck source=bench/mqtt-brokers.sh
source "$ROOT/bench/mqtt-brokers.sh"

# ensure_nats: installs Debian's nats-server without starting its service.
ensure_nats() {
  command -v nats-server >/dev/null 2>&1 && return
  [[ "$SKIP_INSTALL" == 1 ]] && { echo "nats-server missing (SKIP_INSTALL=1)" >&2; exit 1; }
  local sudo=() policy=/usr/sbin/policy-rc.d backup="" status=0
  [[ "$(id -u)" -eq 0 ]] || sudo=(sudo -n)
  if [[ -e "$policy" ]]; then
    backup=$(mktemp)
    cp "$policy" "$backup"
  fi
  printf '#!/bin/sh\n# written by herald bench/compare.sh during apt-get install\nexit 101\n' |
    "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  log "apt-get install nats-server"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    nats-server >/dev/null || status=$?
  if [[ -n "$backup" ]]; then
    "${sudo[@]}" tee "$policy" <"$backup" >/dev/null
    rm -f "$backup"
  else
    "${sudo[@]}" rm -f "$policy"
  fi
  [[ "$status" == 0 ]] || exit "$status"
  # A service that was started anyway (no policy-rc.d support) must not hold ports.
  if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    "${sudo[@]}" systemctl disable --now nats-server >/dev/null 2>&1 || true
  fi
}

# ensure_matplotlib: prints a python that has matplotlib (the system one, else a venv in $VENV).
ensure_matplotlib() {
  if python3 -c 'import matplotlib' 2>/dev/null; then
    echo python3
    return
  fi
  if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q matplotlib >&2
  fi
  echo "$VENV/bin/python"
}

# cpu_mark: sets CPU_MARK to "busy_jiffies server_jiffies children_jiffies" now. Not to be
# called in a subshell: `times` must see this shell's finished children (herald-bench).
cpu_mark() {
  local busy server=0 children
  busy=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat)
  if [[ -n "$SERVER_PID" && -r /proc/$SERVER_PID/stat ]]; then
    server=$(sed 's/.*) //' "/proc/$SERVER_PID/stat" | awk '{ print $12 + $13 }')
  fi
  # `times`, second line: user and system time of this shell's finished children.
  times >"$OUT/.times"
  children=$(sed -n 2p "$OUT/.times" | awk -v hz="$(getconf CLK_TCK)" '{
    n = 0
    for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); n += (a[1] * 60 + a[2]) * hz }
    printf "%.0f", n }')
  CPU_MARK="$busy $server $children"
}

# cpu_other BEFORE AFTER SECONDS: cores used by everything but the broker and herald-bench.
cpu_other() {
  awk -v s="$3" -v hz="$(getconf CLK_TCK)" -v a="$1" -v b="$2" 'BEGIN {
    split(a, x, " "); split(b, y, " ")
    o = ((y[1] - x[1]) - (y[2] - x[2]) - (y[3] - x[3])) / hz / s
    printf "%.2f", (o < 0 ? 0 : o) }'
}

# run_bench DIR NAME ARGS...: one herald-bench run, JSON to DIR/NAME.json, its command to
# DIR/NAME.cmd, load average and other processes' CPU to DIR/NAME.load / DIR/NAME.other.
run_bench() {
  local dir=$1 name=$2 before after t0 t1 CPU_MARK
  shift 2
  local cmd=("$@" --addr "$ADDR" --protocol "$PROTOCOL" --pid "$SERVER_PID")
  cut -d' ' -f1-3 /proc/loadavg >"$dir/$name.load"
  echo "herald-bench ${cmd[*]}" | sed "s/$ADDR/\$ADDR/; s/--pid $SERVER_PID/--pid \$PID/" \
    >"$dir/$name.cmd"
  log "$broker $scenario$([[ $name == result ]] || echo " ($name)") (uptime: $(uptime)): herald-bench ${cmd[*]}"
  cpu_mark
  before=$CPU_MARK
  t0=$(date +%s.%N)
  bench "${cmd[@]}" --json-out "$dir/$name.json" || echo "  (run failed; see above)"
  t1=$(date +%s.%N)
  cpu_mark
  after=$CPU_MARK
  cpu_other "$before" "$after" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
    >"$dir/$name.other"
  echo "  other processes: $(cat "$dir/$name.other") cores over the run"
}

build_release
if [[ " $BROKERS " == *" mosquitto "* && "$SKIP_INSTALL" != 1 ]]; then
  log "bash scripts/setup-mqtt-tools.sh"
  bash "$ROOT/scripts/setup-mqtt-tools.sh"
fi
if [[ " $BROKERS " == *" nats "* ]]; then
  ensure_nats
fi

versions=("herald: $("$HERALD" --version 2>/dev/null | head -n1)")
# `mosquitto -h` exits with status 3 after printing its version.
command -v mosquitto >/dev/null 2>&1 &&
  versions+=("mosquitto: $({ mosquitto -h 2>/dev/null || true; } | head -n1)")
command -v nats-server >/dev/null 2>&1 && versions+=("nats-server: $(nats-server --version)")
machine "${versions[@]}" "ulimit -n: $(ulimit -n)" "protocol: MQTT $PROTOCOL" \
  "memory: $(free -m | awk '/^Mem:/ { print $2 " MiB" }')" | tee "$OUT/machine.txt"
{
  echo "  command: $(for v in BROKERS SCENARIOS DURATION; do printf '%s=%q ' "$v" "${!v}"; done)bench/compare.sh"
  echo "  date: $(date -u '+%Y-%m-%d %H:%M UTC')"
} | tee -a "$OUT/machine.txt"

for broker in $BROKERS; do
  for scenario in $SCENARIOS; do
    dir="$OUT/$broker-$scenario"
    rm -rf "$dir"
    mkdir -p "$dir"
    case "$broker" in
      herald) start_herald "$dir" 0 ;;
      herald-mem) start_herald "$dir" 1 ;;
      mosquitto) start_mosquitto "$dir" false ;;
      nats) start_nats "$dir" ;;
      *) echo "unknown broker $broker (known: herald herald-mem mosquitto nats)" >&2; exit 2 ;;
    esac
    RUN_TIMEOUT=300
    fanout=(mqtt-fanout --qos 0 --payload-bytes "$PAYLOAD" --window "$WINDOW"
      --duration "$DURATION")
    case "$scenario" in
      fanout100) run_bench "$dir" result "${fanout[@]}" --publishers 1 --subscribers 100 ;;
      fanout1000) run_bench "$dir" result "${fanout[@]}" --publishers 1 --subscribers 1000 ;;
      distinct)
        run_bench "$dir" result "${fanout[@]}" --topics distinct --topic bench/t \
          --publishers 100 --subscribers 100
        ;;
      publish)
        run_bench "$dir" result mqtt-publish --publishers "$PUBLISHERS" --inflight "$INFLIGHT" \
          --qos 1 --payload-bytes "$PAYLOAD" --duration "$DURATION"
        ;;
      idle10k | idle50k)
        if [[ "$broker" == herald* ]]; then
          MQTT_BENCH_PASSWORD=$(herald_token)
        fi
        # One warm-up connection set first, so that one-time costs (nats-server creates its
        # MQTT streams with the first connection) are not counted per connection.
        timeout 60 "$BENCH" mqtt-idle --connections 10 --settle 0s --addr "$ADDR" \
          --protocol "$PROTOCOL" --pid "$SERVER_PID" --prefix bench/warmup >/dev/null ||
          echo "  (warm-up failed)"
        if [[ "$scenario" == idle10k ]]; then
          run_bench "$dir" result mqtt-idle --connections 10000
        else
          # shellcheck disable=SC2034 # read by bench() in bench/lib.sh
          RUN_TIMEOUT=600
          # Both the broker and herald-bench need a descriptor per connection: where the hard
          # limit cannot be raised (no CAP_SYS_RESOURCE) run as many as it allows, and say so.
          idle=50000
          limit=$(ulimit -n)
          if [[ "$limit" != unlimited ]] && ((limit < idle + 512)); then
            idle=$(((limit - 512) / 1000 * 1000))
            echo "capped at $idle connections: the open-files limit is $limit (ulimit -n; the" \
              "hard limit could not be raised to 50,512) and the broker and herald-bench each" \
              "need one descriptor per connection" | tee "$dir/note.txt"
          fi
          run_bench "$dir" result mqtt-idle --connections "$idle" --source-ips 4 \
            --setup-timeout 300s
        fi
        ;;
      half)
        run_bench "$dir" max "${fanout[@]}" --publishers 1 --subscribers 100
        rate=$(python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))["published_per_second"] * float(sys.argv[2]) / 100
print(f"{max(r, 1):.0f}")' "$dir/max.json" "$HALF_PERCENT" 2>/dev/null || true)
        if [[ -n "$rate" ]]; then
          run_bench "$dir" result "${fanout[@]}" --publishers 1 --subscribers 100 --rate "$rate/s"
        fi
        ;;
      *)
        echo "unknown scenario $scenario (known: fanout100 fanout1000 distinct publish idle10k idle50k half)" >&2
        exit 2
        ;;
    esac
    stop_server
    if [[ "$KEEP_DATA" != 1 ]]; then
      rm -rf "$dir/data"
    fi
  done
done

log "summary"
summary=(python3 "$ROOT/bench/chart.py" --out "$OUT" --brokers "$BROKERS" --scenarios "$SCENARIOS")
"${summary[@]}" --md "$OUT/compare.md" || echo "(summary failed)"
cat "$OUT/compare.md" 2>/dev/null || true
py=$(ensure_matplotlib) || py=""
if [[ -n "$py" ]]; then
  "$py" "$ROOT/bench/chart.py" --out "$OUT" --brokers "$BROKERS" --scenarios "$SCENARIOS" \
    --png "$OUT/compare.png" || echo "(chart failed)"
fi
if [[ -n "$DOCS" ]]; then
  mkdir -p "$DOCS"
  cp "$OUT/compare.md" "$DOCS/compare.md" 2>/dev/null || true
  cp "$OUT/compare.png" "$DOCS/compare.png" 2>/dev/null || true
  echo "written: $DOCS/compare.md $DOCS/compare.png"
fi
rm -f "$OUT/.times"
echo "files: $OUT"
