# Helpers shared by the service scripts in this directory; sourced, never run.
# The sourcing script sets `script_name` first; for stop_pid `process_pattern` and
# `stop_timeout_s`; for fail_with_log `service_log` (the log file's name in DIR); for
# refuse_if_running `service_noun` ("broker", "server").

log() { printf '%s: %s\n' "$script_name" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Prints the script's usage block (its header comment, lines 2-9) and exits 2.
usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Prints a TCP port on 127.0.0.1 that is free now (openbao.sh has its own, which can also
# find a free pair).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
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

# Stops the process in DIR/pid with SIGNAL (default TERM; after `stop_timeout_s` without
# exiting it gets SIGKILL). Succeeds if nothing runs. Only a process whose command line
# matches `process_pattern` is signalled, so a reused pid is left alone.
stop_pid() {
    local dir="$1" signal="${2:-TERM}" pid deadline
    [[ -f "$dir/pid" ]] || return 0
    pid="$(cat "$dir/pid")"
    if ! [[ "$pid" =~ ^[0-9]+$ ]]; then
        rm -f "$dir/pid"
        return 0
    fi
    if pid_alive "$pid" && ! tr '\0' ' ' 2>/dev/null <"/proc/${pid}/cmdline" | grep -q "$process_pattern"; then
        log "pid $pid from $dir/pid is not a ${process_pattern} process any more; leaving it alone"
        rm -f "$dir/pid"
        return 0
    fi
    if pid_alive "$pid"; then
        kill "-${signal}" "$pid" 2>/dev/null || true
        deadline=$((SECONDS + stop_timeout_s))
        while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
        if pid_alive "$pid"; then
            log "pid $pid still running ${stop_timeout_s}s after SIG${signal}; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while pid_alive "$pid"; do sleep 0.1; done
        fi
    fi
    rm -f "$dir/pid"
}

# Logs an error with the last lines of DIR's service log, and exits 1.
fail_with_log() {
    local dir="$1"
    shift
    log "error: $*"
    if [[ -f "$dir/$service_log" ]]; then
        log "last lines of $dir/$service_log:"
        tail -n 30 "$dir/$service_log" >&2
    fi
    exit 1
}

# Refuses to start a second process from DIR while one runs.
refuse_if_running() {
    local dir="$1"
    if [[ -f "$dir/pid" ]] && pid_alive "$(cat "$dir/pid")"; then
        die "a ${service_noun} is already running from $dir (pid $(cat "$dir/pid")); stop it first"
    fi
}
