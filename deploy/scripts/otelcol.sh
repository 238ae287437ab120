#!/usr/bin/env bash
# Builds, starts and stops a real OpenTelemetry Collector for the OTLP export tests.
#
#   otelcol.sh install     ensure the collector is built and cached; print its absolute path
#   otelcol.sh start DIR   collector with an OTLP/HTTP receiver on 127.0.0.1, spans to a file
#   otelcol.sh stop DIR    stop the collector whose pid is in DIR/pid (idempotent)
#
# A started collector leaves in DIR: `addr` (http://127.0.0.1:PORT, the receiver), `pid`,
# `config.yaml`, `otelcol.log`, and `spans.jsonl`, where its file exporter writes each batch
# it receives as one OTLP/JSON line. Nothing else is printed on stdout; progress and errors
# go to stderr.
#
# The collector is the upstream one (go.opentelemetry.io/collector) with just the OTLP
# receiver and the contrib file exporter, wired in deploy/otelcol/main.go and built with
# `go build` (modules from the Go proxy) into the cache, once per source digest.
#
# Environment:
#   CUSTOS_CACHE               cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/custos)
#   OTELCOL_START_TIMEOUT_S    how long a start waits for the receiver (default: 30)
#   OTELCOL_STOP_TIMEOUT_S     how long stop waits after SIGTERM before SIGKILL (default: 10)

set -euo pipefail

readonly script_name="otelcol.sh"
readonly process_pattern="custos-otelcol"
readonly service_log="otelcol.log"
readonly service_noun="collector"
readonly stop_timeout_s="${OTELCOL_STOP_TIMEOUT_S:-10}"
readonly start_timeout_s="${OTELCOL_START_TIMEOUT_S:-30}"
readonly start_attempts_max=5
# shellcheck source=deploy/scripts/common.sh
source "$(dirname "$0")/common.sh"

readonly source_dir="$(cd "$(dirname "$0")/../otelcol" && pwd)"
readonly cache="${CUSTOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/custos}"

cmd_install() {
    local digest binary staging
    need go "install Go 1.26 or newer (deploy/otelcol/go.mod)"
    need sha256sum "coreutils"
    digest="$(cat "$source_dir/go.mod" "$source_dir/go.sum" "$source_dir/main.go" | sha256sum | cut -c1-16)"
    binary="$cache/custos-otelcol-$digest"
    if [[ ! -x "$binary" ]]; then
        mkdir -p "$cache"
        staging="$binary.$$"
        log "building the collector from $source_dir (once per source digest)"
        (cd "$source_dir" && go build -o "$staging" .) >&2 || die "go build of the collector failed"
        # Atomic: parallel tests never run a half-written binary.
        mv -f "$staging" "$binary"
    fi
    printf '%s\n' "$binary"
}

cmd_start() {
    local dir="$1" binary attempt port pid code deadline
    need curl "install curl"
    binary="$(cmd_install)"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    refuse_if_running "$dir"
    for ((attempt = 1; attempt <= start_attempts_max; attempt++)); do
        port="$(free_port)"
        cat >"$dir/config.yaml" <<EOF
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:${port}
exporters:
  file:
    path: ${dir}/spans.jsonl
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
EOF
        : >"$dir/otelcol.log"
        "$binary" --config "file:$dir/config.yaml" </dev/null >>"$dir/otelcol.log" 2>&1 &
        pid="$!"
        printf '%s\n' "$pid" >"$dir/pid"
        deadline=$((SECONDS + start_timeout_s))
        while ((SECONDS < deadline)) && pid_alive "$pid"; do
            # Any HTTP answer (405 to a GET) means the receiver listens.
            code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:${port}/v1/traces" || true)"
            if [[ "$code" != "000" ]]; then
                printf 'http://127.0.0.1:%s\n' "$port" >"$dir/addr"
                log "collector ready at http://127.0.0.1:${port} (pid $pid, ${SECONDS}s)"
                return 0
            fi
            sleep 0.2
        done
        if ! pid_alive "$pid" && grep -q 'address already in use' "$dir/otelcol.log"; then
            log "port $port was taken before the collector bound it; retrying ($attempt/$start_attempts_max)"
            continue
        fi
        if ! pid_alive "$pid"; then
            rm -f "$dir/pid"
            fail_with_log "$dir" "the collector exited during startup"
        fi
        stop_pid "$dir"
        fail_with_log "$dir" "the collector did not listen within ${start_timeout_s}s"
    done
    rm -f "$dir/pid"
    fail_with_log "$dir" "could not bind a free port in $start_attempts_max attempts"
}

case "${1:-}" in
    install) (($# == 1)) || usage; cmd_install ;;
    start) (($# == 2)) || usage; cmd_start "$2" ;;
    stop) (($# == 2)) || usage; stop_pid "$2" ;;
    *) usage ;;
esac
