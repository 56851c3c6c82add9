#!/usr/bin/env bash
# What the relay's SQL costs PostgreSQL per row, piece by piece, against the least a
# relay could do: a plain queue-table drain (the next 500 unsent rows in seq order,
# then a DELETE of them by id).
#
# Each variant drains a backlog of --rows rows (the contract's INSERT, one key per
# row, a 256-byte payload) in batches of 500 on one connection, a commit after each
# batch, inside one DO block so the client's round trips and the rows' trip over the
# wire stay out of it: what is left is PostgreSQL's work. The figure is the CPU time
# of that server process (its /proc/self/schedstat, read with pg_read_file, so the
# user must be a superuser) per row. Variants run interleaved; the report gives the
# median of --rounds rounds.
#
#   drain   the baseline: SELECT of the next 500 unsent rows (payload as text),
#           DELETE by id
#   claim   outbox_ready_batch(), the relay's claim (leases, blocked keys, the byte
#           bound), without the DELETE
#   relay   the claim and the DELETE of the claimed rows, as the relay settles them
#   vacuum  VACUUM of the outbox after the relay variant: the dead rows' later cost
#
# Usage: bench/relay-pg-cost.sh [--rounds N] [--rows N]
# Needs psql and the PostgreSQL of DATABASE_URL. The last line is `ratio X`: relay
# against drain.
set -euo pipefail

rounds=3
rows=50000
while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --rows) rows=$2; shift 2 ;;
        *) echo "usage: $0 [--rounds N] [--rows N]" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
server=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
server=${server%/*}
db=relay_pg_cost

sql() { psql "$server/$1" -X -q -v ON_ERROR_STOP=1 -At "${@:2}"; }

sql postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
for file in "$root"/migrations/*.sql; do sql "$db" -f "$file" >/dev/null; done
sql "$db" -c "INSERT INTO outbox_relay_instance (instance_id, hostname) VALUES ('bench', 'bench')" \
    -c "UPDATE outbox_relay_lease SET owner = 'bench', expires_at = now() + interval '1 day'"
trap 'sql postgres -c "DROP DATABASE IF EXISTS $db"' EXIT

# One statement per batch, each batch's rows read into `ids`, `last` the cursor.
declare -A batch=(
    [drain]="SELECT array_agg(b.id), max(b.seq), sum(octet_length(b.payload)) INTO ids, last, bytes
             FROM (SELECT id, seq, payload::text AS payload FROM outbox
                   WHERE state IN ('pending', 'retry') AND seq > last ORDER BY seq LIMIT 500) b;
             EXIT WHEN ids IS NULL;
             DELETE FROM outbox WHERE id = ANY (ids);"
    [claim]="SELECT array_agg(b.id), max(b.seq), sum(octet_length(b.payload)) INTO ids, last, bytes
             FROM outbox_ready_batch('bench', partitions, last, 500, 4194304) b;
             EXIT WHEN ids IS NULL;"
    [relay]="SELECT array_agg(b.id), max(b.seq), sum(octet_length(b.payload)) INTO ids, last, bytes
             FROM outbox_ready_batch('bench', partitions, last, 500, 4194304) b;
             EXIT WHEN ids IS NULL;
             DELETE FROM outbox WHERE id = ANY (ids);"
)
variants=(drain claim relay)
declare -A label=(
    [drain]="a plain drain: SELECT 500 by seq, DELETE by id"
    [claim]="outbox_ready_batch() alone"
    [relay]="outbox_ready_batch() and the DELETE (the relay)"
    [vacuum]="VACUUM of the rows the relay deleted"
)

# The server process's CPU nanoseconds so far, as a psql variable assignment.
now_ns="SELECT split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint AS t0 \\gset"
since_ns="SELECT (split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint - :t0) / $rows"

load() {
    sql "$db" -c "DELETE FROM outbox" -c "VACUUM outbox" \
        -c "INSERT INTO outbox (saga_id, step, routing_key, payload)
            SELECT 'order-' || i, 'OrderCreated', 'orders.created',
                   jsonb_build_object('order_id', i, 'note', repeat('x', 220))
            FROM generate_series(1, $rows) i" \
        -c "VACUUM ANALYZE outbox" -c "CHECKPOINT"
}

# CPU nanoseconds per row of one variant; for relay, also VACUUM's, on a second line.
measure() {
    load
    sql "$db" <<SQL
$now_ns
DO \$\$
DECLARE
    ids uuid[];
    last bigint := 0;
    bytes bigint;
    partitions smallint[] := ARRAY(SELECT generate_series(0, 63)::smallint);
BEGIN
    LOOP
        ${batch[$1]}
        COMMIT;
    END LOOP;
END
\$\$;
$since_ns;
SQL
    if [[ $1 == relay ]]; then
        sql "$db" <<SQL
$now_ns
VACUUM outbox;
$since_ns;
SQL
    fi
}

median() { sort -n | awk '{v[NR] = $1} END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f", m / 1000}'; }

declare -A samples
for ((round = 1; round <= rounds; round++)); do
    for variant in "${variants[@]}"; do
        readarray -t figures < <(measure "$variant")
        samples[$variant]+="${figures[0]} "
        [[ $variant == relay ]] && samples[vacuum]+="${figures[1]} "
    done
done

printf '%-52s %s\n' "variant ($rows rows, batches of 500)" "CPU per row (median of $rounds)"
for variant in "${variants[@]}" vacuum; do
    printf '%-52s %8s µs\n' "${label[$variant]}" "$(tr ' ' '\n' <<<"${samples[$variant]}" | grep . | median)"
done
drain=$(tr ' ' '\n' <<<"${samples[drain]}" | grep . | median)
relay=$(tr ' ' '\n' <<<"${samples[relay]}" | grep . | median)
echo "ratio $(printf '%.2f' "$(echo "$relay / $drain" | bc -l)")"
