#!/usr/bin/env bash
# MQTT broker benchmark: Herald against Debian's Mosquitto, same load generator, same machine
# (results: docs/benchmarks.md, "MQTT").
#
# For each broker and each scenario this starts a fresh broker on a free loopback port, runs
# one `herald-bench mqtt-*` scenario against it (bounded by `timeout`) and stops it. Brokers:
#   mosquitto          Debian's `mosquitto` (installed by scripts/setup-mqtt-tools.sh if
#                      missing) with a generated config: password file, no anonymous access,
#                      no persistence (its default), max_inflight_messages 256 (Herald's
#                      outgoing in-flight cap), max_queued_messages 100000, Nagle on (its
#                      default: set_tcp_nodelay false)
#   mosquitto-nodelay  the same with set_tcp_nodelay true (Herald sets TCP_NODELAY)
#   herald             `herald serve --mqtt`, temporary data dir, user `admin` from
#                      HERALD_ADMIN_PASSWORD; topics are durable (the default: a QoS 1 PUBACK
#                      means committed, group-commit fsync)
#   herald-mem         the same with `[[retention]] pattern = "/bench/#" memory-only = true`:
#                      like Mosquitto, nothing is written to disk
# Scenarios:
#   fanout         QoS 0, 1 publisher as fast as its window allows, $SUBSCRIBERS subscribers
#                  on one topic, $PAYLOAD-byte payloads, $DURATION
#   fanout-rate    the same at a fixed $RATE: latency below both brokers' capacity
#   fanout-qos1    the fanout at QoS 1 (publishes and subscriptions); not in the default list
#   publish        $PUBLISHERS publishers, QoS 1, $INFLIGHT unacknowledged each, own topic each
#   idle           $IDLE idle connections, one subscription each: broker RSS per connection.
#                  Herald connections log in with a session token (POST /sessions) as the
#                  password; see idle-password
#   idle-password  the same with the user's password on Herald (an argon2id verification per
#                  CONNECT: slow on purpose); not in the default list
# Target (MQTT issue): at least 1.5x Mosquitto's delivered throughput at equal or lower p99.
#
# Usage: bench/mqtt.sh
#        BROKERS="mosquitto herald-mem" SCENARIOS=fanout DURATION=5s bench/mqtt.sh
# Environment (defaults in brackets):
#   BROKERS [mosquitto herald herald-mem]   SCENARIOS [fanout fanout-rate publish idle]
#   DURATION [10s]   SUBSCRIBERS [100]   FANOUT_PUBLISHERS [1]   PAYLOAD [100]   WINDOW [100]
#   RATE [1000/s]   PUBLISHERS [50]   INFLIGHT [16]   IDLE [10000]   PROTOCOL [3.1.1]
#   OUT [a new /tmp/herald-mqtt.XXXXXX]   SKIP_BUILD [0]
#
# Safety: every broker listens on 127.0.0.1 only, every run is bounded (`timeout`), and the
# brokers this script starts are stopped on exit, Ctrl-C or error (trap, bench/lib.sh). Data
# directories, configs and password files live under $OUT.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BROKERS=${BROKERS:-"mosquitto herald herald-mem"}
SCENARIOS=${SCENARIOS:-"fanout fanout-rate publish idle"}
DURATION=${DURATION:-10s}
SUBSCRIBERS=${SUBSCRIBERS:-100}
FANOUT_PUBLISHERS=${FANOUT_PUBLISHERS:-1}
PAYLOAD=${PAYLOAD:-100}
WINDOW=${WINDOW:-100}
RATE=${RATE:-1000/s}
PUBLISHERS=${PUBLISHERS:-50}
INFLIGHT=${INFLIGHT:-16}
IDLE=${IDLE:-10000}
PROTOCOL=${PROTOCOL:-3.1.1}
SKIP_BUILD=${SKIP_BUILD:-0}
OUT=${OUT:-$(mktemp -d /tmp/herald-mqtt.XXXXXX)}
mkdir -p "$OUT"

# RUN_TIMEOUT is used by bench/lib.sh.
# shellcheck disable=SC2034
RUN_TIMEOUT=300
# Random per run; written to $OUT only as Mosquitto's (hashed) password file.
PASSWORD=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
PATH="$PATH:/usr/sbin:/sbin"

# 10,000 idle connections are 10,000 sockets in each process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# shellcheck source=bench/mqtt-brokers.sh
source "$ROOT/bench/mqtt-brokers.sh"

build_release
if [[ " $BROKERS " == *" mosquitto"* ]]; then
  log "bash scripts/setup-mqtt-tools.sh"
  bash "$ROOT/scripts/setup-mqtt-tools.sh"
fi
# `mosquitto -h` exits with status 3 after printing its version.
machine "mosquitto: $({ mosquitto -h 2>/dev/null || true; } | head -n1)" "ulimit: $(ulimit -n)" \
  "protocol: MQTT $PROTOCOL"

for broker in $BROKERS; do
  for scenario in $SCENARIOS; do
    dir="$OUT/$broker-$scenario"
    rm -rf "$dir"
    mkdir -p "$dir"
    case "$broker" in
      mosquitto) start_mosquitto "$dir" false ;;
      mosquitto-nodelay) start_mosquitto "$dir" true ;;
      herald) start_herald "$dir" 0 ;;
      herald-mem) start_herald "$dir" 1 ;;
      *) echo "unknown broker $broker (known: mosquitto mosquitto-nodelay herald herald-mem)" >&2; exit 2 ;;
    esac
    fanout=(mqtt-fanout --subscribers "$SUBSCRIBERS" --publishers "$FANOUT_PUBLISHERS"
      --payload-bytes "$PAYLOAD" --window "$WINDOW" --duration "$DURATION")
    case "$scenario" in
      fanout) cmd=("${fanout[@]}" --qos 0) ;;
      fanout-rate) cmd=("${fanout[@]}" --qos 0 --rate "$RATE") ;;
      fanout-qos1) cmd=("${fanout[@]}" --qos 1) ;;
      publish) cmd=(mqtt-publish --publishers "$PUBLISHERS" --inflight "$INFLIGHT" --qos 1
        --payload-bytes "$PAYLOAD" --duration "$DURATION") ;;
      idle | idle-password)
        cmd=(mqtt-idle --connections "$IDLE")
        if [[ "$scenario" == idle && "$broker" == herald* ]]; then
          MQTT_BENCH_PASSWORD=$(herald_token)
        fi
        ;;
      *) echo "unknown scenario $scenario (known: fanout fanout-rate fanout-qos1 publish idle idle-password)" >&2; exit 2 ;;
    esac
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "$load" >"$dir/result.load"
    log "$broker $scenario (uptime: $(uptime)): herald-bench ${cmd[*]} --addr $ADDR --protocol $PROTOCOL"
    bench "${cmd[@]}" --addr "$ADDR" --protocol "$PROTOCOL" --pid "$SERVER_PID" \
      --json-out "$dir/result.json" || echo "  (run failed; see above)"
    stop_server
  done
done

log "summary"
PYTHONPATH="$ROOT/bench" python3 - "$OUT" "$BROKERS" "$SCENARIOS" <<'EOF' | tee "$OUT/summary.md"
import sys

from benchfmt import cpu, load, ms, n, ratio

out, brokers, scenarios = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
names = {"mosquitto": "Mosquitto", "mosquitto-nodelay": "Mosquitto (TCP_NODELAY)",
         "herald": "Herald durable", "herald-mem": "Herald memory-only"}

base_broker = "mosquitto" if "mosquitto" in brokers else brokers[0]
for s in scenarios:
    rows = {b: load(out, b, s) for b in brokers}
    base = rows.get(base_broker)
    if s.startswith("fanout"):
        first = next((r for r in rows.values() if r), None)
        if not first:
            continue
        mode = f"{first['rate_per_publisher']:.0f}/s" if first["rate_per_publisher"] else f"window {first['window']}"
        print(f"\n### {s}: QoS {first['qos']}, {first['publishers']} publisher ({mode}), "
              f"{first['subscribers']} subscribers, {first['payload_bytes']} B, {first['duration_s']:.0f} s\n")
        print("| broker | delivered/s | × " + names.get(base_broker, base_broker) +
              " | published/s | p50 | p99 | p99.9 | lost | errors | CPU broker / bench / other | load |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for b, r in rows.items():
            if not r:
                print(f"| {names.get(b, b)} | failed | | | | | | | | | |")
                continue
            l = r["latency"]
            print(f"| {names.get(b, b)} | {n(r['delivered_per_second'])} | "
                  f"{ratio(r['delivered_per_second'], base and base['delivered_per_second'])} | "
                  f"{n(r['published_per_second'])} | {ms(l['p50_us'])} | {ms(l['p99_us'])} | "
                  f"{ms(l['p999_us'])} | {n(r['lost'])} of {n(r['expected'])} | {len(r['errors'])} | "
                  f"{cpu(r)} | {r['_load']} |")
    elif s == "publish":
        first = next((r for r in rows.values() if r), None)
        if not first:
            continue
        print(f"\n### publish: QoS {first['qos']}, {first['publishers']} publishers × "
              f"{first['inflight']} in flight, {first['payload_bytes']} B, {first['duration_s']:.0f} s\n")
        print("| broker | acknowledged/s | × " + names.get(base_broker, base_broker) +
              " | p50 | p99 | p99.9 | unacked | errors | CPU broker / bench / other | load |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for b, r in rows.items():
            if not r:
                print(f"| {names.get(b, b)} | failed | | | | | | | | |")
                continue
            l = r["ack_latency"]
            print(f"| {names.get(b, b)} | {n(r['acked_per_second'])} | "
                  f"{ratio(r['acked_per_second'], base and base['acked_per_second'])} | "
                  f"{ms(l['p50_us'])} | {ms(l['p99_us'])} | {ms(l['p999_us'])} | {n(r['unacked'])} | "
                  f"{len(r['errors'])} | {cpu(r)} | {r['_load']} |")
    elif s.startswith("idle"):
        first = next((r for r in rows.values() if r), None)
        if not first:
            continue
        print(f"\n### {s}: {first['connections']:,} idle connections, one subscription each\n")
        print("| broker | established | connect time | RSS before | RSS all open | KiB per connection | "
              "× " + names.get(base_broker, base_broker) + " | RSS after close | load |")
        print("|---|---|---|---|---|---|---|---|---|")
        mib = lambda b: f"{b / 1048576:.1f} MiB"
        for b, r in rows.items():
            if not r:
                print(f"| {names.get(b, b)} | failed | | | | | | | |")
                continue
            kib = r["bytes_per_connection"] / 1024
            bk = base and base["bytes_per_connection"] / 1024
            print(f"| {names.get(b, b)} | {n(r['established'])} ({r['failed']} failed) | "
                  f"{r['connect_s']:.2f} s | {mib(r['rss_before'])} | {mib(r['rss_after'])} | "
                  f"{kib:.1f} | {ratio(kib, bk)} | {mib(r['rss_after_close'])} | {r['_load']} |")
print(f"\nfiles: {out}")
EOF
