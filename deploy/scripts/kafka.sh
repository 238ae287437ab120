#!/usr/bin/env bash
# Fetches, starts and stops a real Apache Kafka 4.x broker (KRaft, combined broker+controller)
# for Custos' audit tests and benchmarks.
#
#   kafka.sh install          ensure the broker's jars are cached; print the lib directory
#   kafka.sh start DIR        format a fresh single-node cluster in DIR and start it
#   kafka.sh restart DIR      start the broker in DIR again (same ports, same data)
#   kafka.sh stop DIR         stop the broker whose pid is in DIR/pid (idempotent)
#   kafka.sh kill DIR         SIGKILL the broker (a crash, for outage tests)
#
# A started broker leaves in DIR: `bootstrap` (127.0.0.1:PORT), `pid`, `kafka.log`,
# `server.properties` and `data/`. Start commands print nothing on stdout; progress and
# errors go to stderr.
#
# The jars come from Maven Central: deploy/kafka/pom.xml is resolved with
# `mvn dependency:copy-dependencies` into a cache outside the repository, so a fresh machine
# needs only a JDK 17+ and Maven. The broker binds 127.0.0.1 only, on ports picked free at
# start.
#
# Environment:
#   CUSTOS_CACHE             cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/custos)
#   KAFKA_HEAP               JVM heap (default: 512m)
#   KAFKA_START_TIMEOUT_S    how long a start waits for the broker (default: 90)
#   KAFKA_STOP_TIMEOUT_S     how long stop waits after SIGTERM before SIGKILL (default: 20)

set -euo pipefail

readonly repo_root="$(cd "$(dirname "$0")/../.." && pwd)"
readonly pom="${repo_root}/deploy/kafka/pom.xml"
readonly log_config="${repo_root}/deploy/kafka/log4j2.properties"
readonly cache_root="${CUSTOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/custos}"
readonly start_timeout_s="${KAFKA_START_TIMEOUT_S:-90}"
readonly stop_timeout_s="${KAFKA_STOP_TIMEOUT_S:-20}"
readonly heap="${KAFKA_HEAP:-512m}"
readonly start_attempts_max=3

readonly script_name="kafka.sh"
# What stop_pid checks a pid file's process for before signalling it.
readonly process_pattern="kafka.Kafka"
readonly service_log="kafka.log"
readonly service_noun="broker"
# shellcheck source=deploy/scripts/common.sh
source "$(dirname "$0")/common.sh"

# ---------------------------------------------------------------------------------------------
# install

# The cache directory is keyed by the pom's content, so a version bump installs afresh.
lib_dir() {
    local digest
    digest="$(sha256sum "$pom" "$log_config" | sha256sum | cut -c1-16)"
    printf '%s/kafka/%s/libs\n' "$cache_root" "$digest"
}

cmd_install() {
    local libs
    libs="$(lib_dir)"
    if [[ -f "${libs}/.complete" ]]; then
        printf '%s\n' "$libs"
        return
    fi
    need java "install a JDK 17+"
    need mvn "install Apache Maven 3.8+"
    local parent
    parent="$(dirname "$libs")"
    mkdir -p "$parent"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"${parent}/.install.lock"
        flock -w 900 9 || die "timed out waiting for the install lock"
    fi
    if [[ ! -f "${libs}/.complete" ]]; then
        local staging
        staging="$(mktemp -d "${parent}/.staging.XXXXXX")"
        # shellcheck disable=SC2064 # expand now: the variable is local.
        trap "rm -rf '$staging'" EXIT
        log "resolving the Kafka broker jars from Maven Central into ${libs}"
        mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
            -DoutputDirectory="$staging" >&2 || die "mvn could not resolve ${pom}"
        compgen -G "${staging}/kafka_2.13-*.jar" >/dev/null || die "no kafka_2.13 jar was resolved"
        touch "${staging}/.complete"
        rm -rf "$libs"
        mv "$staging" "$libs"
        trap - EXIT
    fi
    printf '%s\n' "$libs"
}

# ---------------------------------------------------------------------------------------------
# helpers

write_config() {
    local dir="$1" port="$2" controller_port="$3"
    cat >"$dir/server.properties" <<EOF
# Written by deploy/scripts/kafka.sh: one KRaft node, broker and controller, loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${controller_port}
listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:${port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=${dir}/data
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
EOF
}

# Sets `jvm` to the java command line (up to the main class) on the broker's classpath.
jvm=()
set_jvm() {
    local libs="$1"
    jvm=(java "-Xmx${heap}" "-Xms${heap}" -XX:+UseSerialGC -Djava.awt.headless=true
        "-Dlog4j2.configurationFile=${log_config}" -cp "${libs}/*")
}

# Launches the broker in the background and waits until it logs that it has started.
# Returns 0 when ready, 1 on timeout, 2 when the process exited.
launch_and_wait() {
    local dir="$1" libs="$2" pid deadline offset
    # Only lines this launch writes count: the log keeps earlier runs.
    offset="$(stat -c %s "$dir/kafka.log" 2>/dev/null || echo 0)"
    set_jvm "$libs"
    "${jvm[@]}" kafka.Kafka "$dir/server.properties" </dev/null >>"$dir/kafka.log" 2>&1 &
    pid="$!"
    printf '%s\n' "$pid" >"$dir/pid"
    deadline=$((SECONDS + start_timeout_s))
    while ((SECONDS < deadline)); do
        pid_alive "$pid" || return 2
        tail -c "+$((offset + 1))" "$dir/kafka.log" | grep -q 'Kafka Server started' && return 0
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# start / restart / stop

cmd_start() {
    local dir="$1" libs attempt port controller_port cluster_id rc
    need python3 "install Python 3"
    libs="$(cmd_install)"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    refuse_if_running "$dir"
    [[ -d "$dir/data" ]] && die "$dir/data exists; use restart, or remove $dir first"
    for ((attempt = 1; attempt <= start_attempts_max; attempt++)); do
        port="$(free_port)"
        controller_port="$(free_port)"
        [[ "$port" == "$controller_port" ]] && continue
        rm -rf "$dir/data"
        write_config "$dir" "$port" "$controller_port"
        : >"$dir/kafka.log"
        set_jvm "$libs"
        cluster_id="$("${jvm[@]}" kafka.tools.StorageTool random-uuid 2>>"$dir/kafka.log")" \
            || fail_with_log "$dir" "kafka-storage random-uuid failed"
        "${jvm[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
            -c "$dir/server.properties" >>"$dir/kafka.log" 2>&1 \
            || fail_with_log "$dir" "kafka-storage format failed"
        rc=0
        launch_and_wait "$dir" "$libs" || rc=$?
        if ((rc == 0)); then
            printf '127.0.0.1:%s\n' "$port" >"$dir/bootstrap"
            log "broker ready at 127.0.0.1:${port} (pid $(cat "$dir/pid"), ${SECONDS}s)"
            return 0
        fi
        if ((rc == 2)) && grep -q 'Address already in use' "$dir/kafka.log"; then
            log "a port was taken before the broker bound it; retrying ($attempt/$start_attempts_max)"
            continue
        fi
        stop_pid "$dir" TERM
        ((rc == 2)) && fail_with_log "$dir" "the broker exited during startup"
        fail_with_log "$dir" "the broker did not start within ${start_timeout_s}s"
    done
    rm -f "$dir/pid"
    fail_with_log "$dir" "could not bind free ports in $start_attempts_max attempts"
}

cmd_restart() {
    local dir="$1" libs rc=0
    [[ -f "$dir/server.properties" && -f "$dir/bootstrap" ]] \
        || die "$dir has no broker to restart (expected server.properties, bootstrap); use start"
    libs="$(cmd_install)"
    dir="$(cd "$dir" && pwd)"
    stop_pid "$dir" TERM
    # Same ports as before, so clients holding the bootstrap address reconnect by themselves.
    printf -- '--- restart ---\n' >>"$dir/kafka.log"
    launch_and_wait "$dir" "$libs" || rc=$?
    if ((rc != 0)); then
        stop_pid "$dir" TERM
        ((rc == 2)) && fail_with_log "$dir" "the broker exited during restart"
        fail_with_log "$dir" "the broker did not restart within ${start_timeout_s}s"
    fi
    log "broker restarted at $(cat "$dir/bootstrap") (pid $(cat "$dir/pid"), ${SECONDS}s)"
}

# ---------------------------------------------------------------------------------------------

main() {
    (($# >= 1)) || usage
    local cmd="$1"
    shift
    case "$cmd" in
        install) (($# == 0)) || usage; cmd_install ;;
        start) (($# == 1)) || usage; cmd_start "$1" ;;
        restart) (($# == 1)) || usage; cmd_restart "$1" ;;
        stop) (($# == 1)) || usage; [[ -d "$1" ]] && stop_pid "$1" TERM; true ;;
        kill) (($# == 1)) || usage; [[ -d "$1" ]] && stop_pid "$1" KILL; true ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
