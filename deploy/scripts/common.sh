# Helpers shared by the service scripts in this directory; sourced, never run.
# The sourcing script sets `script_name` first.

log() { printf '%s: %s\n' "$script_name" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Prints the script's usage block (its header comment, lines 2-9) and exits 2.
usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

need() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not on PATH ($2)"
}

# True when the pid is a live (not zombie) process.
pid_alive() {
    local pid="$1" state
    kill -0 "$pid" 2>/dev/null || return 1
    # A zombie still answers kill -0 until its parent reaps it; treat it as gone.
    state="$(awk '{print $3}' "/proc/${pid}/stat" 2>/dev/null || true)"
    [[ "$state" != "Z" ]]
}
