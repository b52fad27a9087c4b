# Shared helpers of the setup scripts; source it after defining `die`.

# Run a command as root: directly when we are root, else through sudo
# (non-interactive when there is no terminal, e.g. in CI).
as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [[ -t 0 ]]; then sudo "$@"; else sudo -n "$@"; fi
    else
        die "need root (or sudo) to run: $*"
    fi
}
