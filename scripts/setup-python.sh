#!/usr/bin/env bash
# Ensure the Python virtualenv used by the interop suite (e2e/) exists at
# .venv and holds exactly the packages pinned in e2e/requirements.txt.
#
# Idempotent: when .venv already works and the requirements (and the
# interpreter version) are unchanged since the last install, it does nothing.
# On a fresh Debian machine where `python3 -m venv` fails because ensurepip is
# missing, it installs python3-venv with apt-get (as root, or via sudo) and
# retries.
#
# Environment:
#   HERALD_PYTHON   interpreter used to create the venv (default: python3)
#   HERALD_VENV     venv directory (default: <repo>/.venv)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${HERALD_PYTHON:-python3}"
VENV="${HERALD_VENV:-$ROOT/.venv}"
REQS="$ROOT/e2e/requirements.txt"
STAMP="$VENV/.herald-requirements.sha256"

log() { printf 'setup-python: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found; install Python 3 first"
[[ -f "$REQS" ]] || die "missing $REQS"

venv_works() {
    [[ -x "$VENV/bin/python" ]] &&
        "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1 &&
        "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

# as_root
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

install_venv_support() {
    command -v apt-get >/dev/null 2>&1 ||
        die "'$PYTHON -m venv' failed and apt-get is not available; install the venv module for $PYTHON"
    local pyver
    pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    log "'$PYTHON -m venv' failed (ensurepip missing?); installing python3-venv with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    # python3-venv pulls in the versioned package on Debian; ask for the
    # versioned one too when it exists, so a non-default python3 is covered.
    if apt-cache show "python${pyver}-venv" >/dev/null 2>&1; then
        as_root apt-get install -y -qq python3-venv "python${pyver}-venv" >/dev/null
    else
        as_root apt-get install -y -qq python3-venv >/dev/null
    fi
}

create_venv() {
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" >/dev/null 2>&1 && venv_works
}

if ! venv_works; then
    log "creating virtualenv at $VENV"
    if ! create_venv; then
        install_venv_support
        if ! create_venv; then
            # Show the real error this time.
            rm -rf "$VENV"
            "$PYTHON" -m venv "$VENV" || true
            die "could not create a working virtualenv at $VENV"
        fi
    fi
fi

want="$(
    {
        cat "$REQS"
        "$VENV/bin/python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
)"
have="$(cat "$STAMP" 2>/dev/null || true)"

if [[ "$want" == "$have" ]]; then
    log "virtualenv up to date ($VENV)"
    exit 0
fi

log "installing e2e/requirements.txt into $VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
"$VENV/bin/python" -m pip install --quiet --progress-bar off -r "$REQS"
printf '%s\n' "$want" >"$STAMP"
log "virtualenv ready ($VENV)"
