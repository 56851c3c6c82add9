#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672.
#
# Returns at once when both are up. Starts them when installed but stopped.
# Installs the Debian packages when missing (trust auth for 127.0.0.1). Waits
# until both accept connections, or fails saying which one did not. Quiet when
# all is well; safe to run any number of times.
set -euo pipefail

PG_PORT=5432
AMQP_PORT=5672
WAIT_SECONDS=${SERVICES_WAIT_SECONDS:-90}

say() { printf 'services: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

postgres_ready() {
    if command -v pg_isready >/dev/null; then
        pg_isready -q -h 127.0.0.1 -p "$PG_PORT"
    else
        port_open "$PG_PORT"
    fi
}

# Open is not enough: a RabbitMQ out of file handles takes connections and never
# answers them, and every test would hang. Ready is answering the AMQP header.
amqp_answers() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$AMQP_PORT" || exit 1
        printf 'AMQP\0\0\011\001' >&3
        IFS= read -r -t 10 -N 1 -u 3 _
    ) 2>/dev/null
}

rabbitmq_ready() { port_open "$AMQP_PORT" && amqp_answers; }

# shellcheck source=scripts/apt.sh
. "$(dirname "$0")/apt.sh"

postgres_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

trust_local_connections() {
    local hba
    hba="/etc/postgresql/$(postgres_version)/main/pg_hba.conf"
    if [ -f "$hba" ] && ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
        say "allowing trust auth for 127.0.0.1 in $hba"
        as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
}

start_postgres() {
    if ! command -v pg_ctlcluster >/dev/null || [ -z "$(postgres_version)" ]; then
        apt_install postgresql
    fi
    trust_local_connections
    say "starting PostgreSQL $(postgres_version)"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(postgres_version)" main start || true
}

# RabbitMQ 3.10 reserves three file handles per quorum queue out of what its open
# files limit allows, and `su rabbitmq` gives it the default 1024: some 300 quorum
# queues and it stops answering. Each consumer declares six. Raise the limit for the
# rabbitmq user, as far as this machine allows, before starting it.
raise_rabbitmq_file_limit() {
    local conf=/etc/security/limits.d/rabbitmq.conf limit
    if [ ! -d /etc/security/limits.d ] || [ -e "$conf" ]; then
        return 0
    fi
    limit=$(as_root sh -c 'ulimit -Hn')
    if [ "$limit" = unlimited ] || [ "$limit" -gt 65536 ]; then
        limit=65536
    fi
    say "allowing the rabbitmq user $limit open files ($conf)"
    printf 'rabbitmq soft nofile %s\nrabbitmq hard nofile %s\n' "$limit" "$limit" |
        as_root tee "$conf" >/dev/null
}

start_rabbitmq() {
    if ! command -v rabbitmq-server >/dev/null; then
        apt_install rabbitmq-server
    fi
    raise_rabbitmq_file_limit
    say "starting RabbitMQ"
    as_root rabbitmq-server -detached || true
}

wait_for() {
    local name=$1 check=$2 waited=0
    until "$check"; do
        if [ "$waited" -ge "$WAIT_SECONDS" ]; then
            say "$name did not accept connections on 127.0.0.1 within ${WAIT_SECONDS}s"
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

postgres_ready || start_postgres
if ! rabbitmq_ready; then
    if port_open "$AMQP_PORT"; then
        say "RabbitMQ on 127.0.0.1:$AMQP_PORT takes connections but does not answer them; see" \
            "docs/operations/troubleshooting.md#the-broker-takes-connections-and-never-answers"
        exit 1
    fi
    start_rabbitmq
fi
wait_for PostgreSQL postgres_ready
wait_for RabbitMQ rabbitmq_ready
