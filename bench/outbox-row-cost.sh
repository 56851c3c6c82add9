#!/usr/bin/env bash
# What one outbox row costs PostgreSQL, piece by piece: the contract's INSERT
# (saga_id, step, routing_key and a 256-byte payload) on copies of the outbox table
# with one piece changed, against a plain row of the same columns.
#
# pgbench drives one connection with a prepared INSERT, one row per transaction,
# synchronous_commit off so that the commit's flush does not drown the CPU. The
# figure is the CPU time of that one server process (/proc/PID/schedstat) per row
# written, so pgbench's own CPU and other work on the machine stay out of it; the
# variants run interleaved, and the report gives the median of --rounds rounds.
#
# Usage: bench/outbox-row-cost.sh [--rounds N] [--seconds S]
# Needs pgbench, psql and the PostgreSQL of DATABASE_URL on this machine
# (scripts/services.sh starts it). The last line is `ratio X`: the contract's
# INSERT against the plain row.
set -euo pipefail

rounds=5
seconds=4
while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        *) echo "usage: $0 [--rounds N] [--seconds S]" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
server=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
server=${server%/*}
# The release that moved the column rules into domains; before it, table CHECKs.
domains=20261201000001
# The release that moved the doorbell into the row trigger; before it, two triggers.
one_trigger=20261201000002
variants=(plain table_checks two_triggers contract no_trigger)
declare -A label=(
    [plain]="a plain row, same columns, primary key only"
    [table_checks]="rules as table CHECKs, two triggers"
    [two_triggers]="rules as domains, two triggers"
    [contract]="rules as domains, one trigger (now)"
    [no_trigger]="rules as domains, without the trigger"
)

sql() { psql "$server/$1" -X -q -v ON_ERROR_STOP=1 -At "${@:2}"; }

# Every migration (or, with "before", those before the domains) as plain SQL.
migrate() {
    local db=$1 until=${2:-99999999999999}
    for file in "$root"/migrations/*.sql; do
        local version
        version=$(basename "$file" | cut -d_ -f1)
        [[ $version -lt $until ]] && sql "$db" -f "$file" >/dev/null
    done
    return 0
}

setup() {
    local db=outbox_cost_$1
    sql postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
    case $1 in
        table_checks) migrate "$db" "$domains" ;;
        two_triggers) migrate "$db" "$one_trigger" ;;
        contract) migrate "$db" ;;
        no_trigger)
            migrate "$db"
            sql "$db" -c "DROP TRIGGER outbox_fill_defaults ON outbox"
            ;;
        plain)
            migrate "$db"
            sql "$db" -c "DROP TRIGGER outbox_fill_defaults ON outbox" \
                -c "DROP INDEX outbox_unsent_by_seq, outbox_blocking_by_key, outbox_by_saga, outbox_sent_by_time"
            sql "$db" -c "SELECT format('ALTER DOMAIN %s DROP CONSTRAINT %I', contypid::regtype, conname)
                          FROM pg_constraint WHERE contypid::regtype::text LIKE 'outbox\_%'" |
                while read -r statement; do sql "$db" -c "$statement"; done
            ;;
    esac
}

script=$(mktemp)
trap 'rm -f "$script"' EXIT
note=$(printf 'x%.0s' $(seq 1 172))
cat >"$script" <<EOF
INSERT INTO outbox (saga_id, step, routing_key, payload)
VALUES ('order-' || random(), 'OrderCreated', 'orders.created',
        '{"order_id": 123456, "total_cents": 4200, "customer": "ada lovelace", "note": "$note"}');
EOF

# CPU microseconds of the server process per row, over `seconds` in the middle of a run.
measure() {
    local db=outbox_cost_$1
    sql "$db" -c "TRUNCATE outbox" -c "CHECKPOINT"
    PGOPTIONS='-c synchronous_commit=off' pgbench -n -M prepared -c 1 -T $((seconds + 3)) \
        -f "$script" "$server/$db" >/dev/null 2>&1 &
    local bench=$!
    sleep 1.5
    local pid ns0 ns1 rows0 rows1
    pid=$(sql postgres -c "SELECT pid FROM pg_stat_activity
                           WHERE datname = '$db' AND application_name = 'pgbench'")
    ns0=$(cut -d' ' -f1 "/proc/$pid/schedstat")
    rows0=$(sql "$db" -c "SELECT count(*) FROM outbox")
    sleep "$seconds"
    ns1=$(cut -d' ' -f1 "/proc/$pid/schedstat")
    rows1=$(sql "$db" -c "SELECT count(*) FROM outbox")
    wait "$bench"
    echo $(((ns1 - ns0) / (rows1 - rows0)))
}

median() { sort -n | awk '{v[NR] = $1} END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f", m / 1000}'; }

for variant in "${variants[@]}"; do setup "$variant"; done
declare -A samples
for ((round = 1; round <= rounds; round++)); do
    for variant in "${variants[@]}"; do
        samples[$variant]+="$(measure "$variant") "
    done
done

printf '%-52s %22s  %s\n' "variant" "CPU per row (median of $rounds)" "x plain"
plain=$(tr ' ' '\n' <<<"${samples[plain]}" | grep . | median)
for variant in "${variants[@]}"; do
    cost=$(tr ' ' '\n' <<<"${samples[$variant]}" | grep . | median)
    printf '%-52s %19s µs  %.2f\n' "${label[$variant]}" "$cost" "$(echo "$cost / $plain" | bc -l)"
done
for variant in "${variants[@]}"; do sql postgres -c "DROP DATABASE outbox_cost_$variant"; done
echo "ratio $(printf '%.2f' "$(echo "$(tr ' ' '\n' <<<"${samples[contract]}" | grep . | median) / $plain" | bc -l)")"
