#!/usr/bin/env bash
# The single test command of Herald: lint, build, Rust tests, Python interop.
#
#   scripts/test.sh
#
# Steps (fail fast, in this order):
#   1. python venv   .venv with e2e/requirements.txt (scripts/setup-python.sh), and
#                    Debian's mosquitto + mosquitto-clients (scripts/setup-mqtt-tools.sh)
#   2. fmt           cargo fmt --all --check
#   3. clippy        cargo clippy --workspace --all-targets -- -D warnings
#   4. build         cargo build --workspace --all-targets
#   5. rust tests    cargo nextest run --workspace (or cargo test --workspace)
#   6. doctests      cargo test --workspace --doc
#   7. e2e           .venv/bin/python -m pytest -q e2e   (HERALD_BIN = debug binary)
#
# Skips for local use (set to 1; a default run does everything):
#   HERALD_SKIP_LINT   fmt + clippy          HERALD_SKIP_FMT / HERALD_SKIP_CLIPPY
#   HERALD_SKIP_RUST   Rust tests + doctests HERALD_SKIP_DOCTEST
#   HERALD_SKIP_E2E    venv + Python suite
# Other knobs:
#   HERALD_NO_NEXTEST=1   use cargo test even when cargo-nextest is installed
#   HERALD_PYTEST_ARGS    extra pytest args, e.g. "-k jwt -x" (word-split)
#   HERALD_BIN            binary for the e2e suite (default: <target>/debug/herald)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-auto}"
# One build from scratch gains nothing from incremental compilation's caches (2.8 GB with full
# debug info; a CI run once filled its disk). CARGO_INCREMENTAL=1 keeps them between local runs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

on() { [[ "${!1:-0}" != "0" && -n "${!1:-}" ]]; }

T0=$SECONDS
STEP_T0=$SECONDS
CURRENT=""
banner() {
    CURRENT="$1"
    STEP_T0=$SECONDS
    printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$1"
}
done_step() { printf -- '--> %s: ok (%ss)\n' "$CURRENT" "$((SECONDS - STEP_T0))"; }
skip() { printf '\n==> %s: skipped (%s)\n' "$1" "$2"; }
on_exit() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        printf '\n!!! scripts/test.sh FAILED in step: %s (exit %s, %ss total)\n' \
            "${CURRENT:-setup}" "$rc" "$((SECONDS - T0))" >&2
    fi
}
trap on_exit EXIT

# -------------------------------------------------------------- 1. venv
if on HERALD_SKIP_E2E; then
    skip "python venv" "HERALD_SKIP_E2E"
else
    banner "python venv (.venv, e2e/requirements.txt)"
    bash scripts/setup-python.sh
    bash scripts/setup-mqtt-tools.sh
    done_step
fi

# ---------------------------------------------------------- 2-3. lint
if on HERALD_SKIP_LINT || on HERALD_SKIP_FMT; then
    skip "cargo fmt" "HERALD_SKIP_LINT/HERALD_SKIP_FMT"
else
    banner "cargo fmt --all --check"
    # rustfmt colours its diff even into a pipe unless told otherwise.
    fmt_color=never
    [[ -t 1 ]] && fmt_color=auto
    cargo fmt --all --check -- --color "$fmt_color"
    done_step
fi

if on HERALD_SKIP_LINT || on HERALD_SKIP_CLIPPY; then
    skip "cargo clippy" "HERALD_SKIP_LINT/HERALD_SKIP_CLIPPY"
else
    banner "cargo clippy --workspace --all-targets -- -D warnings"
    cargo clippy --workspace --all-targets -- -D warnings
    done_step
fi

# ------------------------------------------------------------- 4. build
banner "cargo build --workspace --all-targets"
cargo build --workspace --all-targets
done_step

# -------------------------------------------------------- 5-6. Rust tests
if on HERALD_SKIP_RUST; then
    skip "rust tests" "HERALD_SKIP_RUST"
else
    if ! on HERALD_NO_NEXTEST && cargo nextest --version >/dev/null 2>&1; then
        banner "cargo nextest run --workspace"
        # --no-tests=warn: a workspace with no #[test] yet is not an error.
        cargo nextest run --workspace --no-fail-fast --no-tests=warn
    else
        banner "cargo test --workspace"
        cargo test --workspace --no-fail-fast
    fi
    done_step

    if on HERALD_SKIP_DOCTEST; then
        skip "doctests" "HERALD_SKIP_DOCTEST"
    else
        banner "cargo test --workspace --doc"
        cargo test --workspace --doc
        done_step
    fi
fi

# --------------------------------------------------------------- 7. e2e
if on HERALD_SKIP_E2E; then
    skip "e2e (Python interop)" "HERALD_SKIP_E2E"
else
    banner "e2e: python -m pytest -q e2e"
    if [[ -z "${HERALD_BIN:-}" ]]; then
        target_dir="$(cargo metadata --format-version 1 --no-deps |
            .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
        export HERALD_BIN="$target_dir/debug/herald"
    fi
    [[ -x "$HERALD_BIN" ]] || { echo "herald binary not found at $HERALD_BIN" >&2; exit 1; }
    echo "HERALD_BIN=$HERALD_BIN"
    # shellcheck disable=SC2086  # word splitting of extra args is intended
    .venv/bin/python -m pytest -q e2e ${HERALD_PYTEST_ARGS:-}
    done_step
fi

printf '\n==> all steps passed (%ss)\n' "$((SECONDS - T0))"
