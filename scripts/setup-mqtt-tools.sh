#!/usr/bin/env bash
# Ensure the MQTT tools used by the interop suite (e2e/test_mqtt_interop.py)
# are installed: Debian's `mosquitto` (the reference broker the generic MQTT
# tests also run against) and `mosquitto-clients` (mosquitto_pub,
# mosquitto_sub, driven as subprocesses).
#
# Idempotent: when mosquitto, mosquitto_passwd, mosquitto_pub and
# mosquitto_sub are all present it does nothing but check that no broker
# listens on the default port 1883.
#
# The tests start their own mosquitto on an ephemeral loopback port, so the
# system service must never run: packages are installed with a policy-rc.d
# that forbids starting services (exit 101), and any mosquitto service that
# got started anyway is stopped afterwards.
#
# Environment:
#   HERALD_MQTT_SKIP_INSTALL=1   only check, never call apt-get
set -euo pipefail

log() { printf 'setup-mqtt-tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

PATH="$PATH:/usr/sbin:/sbin"
POLICY=/usr/sbin/policy-rc.d

# as_root
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

have_tools() {
    command -v mosquitto >/dev/null 2>&1 &&
        command -v mosquitto_passwd >/dev/null 2>&1 &&
        command -v mosquitto_pub >/dev/null 2>&1 &&
        command -v mosquitto_sub >/dev/null 2>&1
}

# Something listening on TCP port 1883 (the MQTT default)?
port_1883_busy() {
    if command -v ss >/dev/null 2>&1; then
        ss -Hltn 'sport = :1883' 2>/dev/null | grep -q .
    else
        # /proc/net/tcp{,6}: local address column, state 0A = LISTEN, 075B = 1883.
        awk 'NR > 1 && $4 == "0A" && $2 ~ /:075B$/ { found = 1 } END { exit !found }' \
            /proc/net/tcp /proc/net/tcp6 2>/dev/null
    fi
}

stop_system_broker() {
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        as_root systemctl stop mosquitto >/dev/null 2>&1 || true
        as_root systemctl disable mosquitto >/dev/null 2>&1 || true
    fi
    if command -v service >/dev/null 2>&1; then
        as_root service mosquitto stop >/dev/null 2>&1 || true
    elif [[ -x /etc/init.d/mosquitto ]]; then
        as_root /etc/init.d/mosquitto stop >/dev/null 2>&1 || true
    fi
}

restore_policy() {
    if [[ -n "${POLICY_BACKUP:-}" ]]; then
        as_root tee "$POLICY" <"$POLICY_BACKUP" >/dev/null || true
        as_root chmod 755 "$POLICY" || true
        rm -f "$POLICY_BACKUP"
    else
        as_root rm -f "$POLICY" || true
    fi
}

# Install with services forbidden: a policy-rc.d answering 101 ("action
# forbidden") for the duration, restoring whatever was there before.
install_packages() {
    command -v apt-get >/dev/null 2>&1 || die "mosquitto tools are missing and apt-get is not available"
    export DEBIAN_FRONTEND=noninteractive
    POLICY_BACKUP=""
    if [[ -e "$POLICY" ]]; then
        POLICY_BACKUP="$(mktemp)"
        as_root cat "$POLICY" >"$POLICY_BACKUP"
    fi
    trap restore_policy EXIT
    printf '#!/bin/sh\n# written by herald scripts/setup-mqtt-tools.sh during apt-get install\nexit 101\n' |
        as_root tee "$POLICY" >/dev/null
    as_root chmod 755 "$POLICY"

    log "installing mosquitto and mosquitto-clients with apt-get"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients >/dev/null

    restore_policy
    trap - EXIT
}

if have_tools; then
    log "mosquitto tools present"
else
    [[ "${HERALD_MQTT_SKIP_INSTALL:-0}" == "0" ]] || die "mosquitto tools missing (HERALD_MQTT_SKIP_INSTALL is set)"
    install_packages
    have_tools || die "mosquitto tools still missing after apt-get install"
    stop_system_broker
fi

if port_1883_busy; then
    stop_system_broker
    sleep 1
    if port_1883_busy; then
        log "warning: something still listens on port 1883 (not started by this script); the tests use ephemeral ports and do not need it"
    else
        log "stopped the system mosquitto service"
    fi
fi

log "ready: $(mosquitto -h 2>/dev/null | head -n1 || true)"
