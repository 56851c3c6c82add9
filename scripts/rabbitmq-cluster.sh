#!/usr/bin/env bash
# A local three-node RabbitMQ cluster for tests, the demo and people, on ports and in a
# directory of its own; the machine's broker (5672) is not touched.
#
#   scripts/rabbitmq-cluster.sh start    # start it (or its nodes that are down); prints the AMQP_URL list
#   scripts/rabbitmq-cluster.sh status   # each node and whether it runs in the cluster (exit 3 unless all do)
#   scripts/rabbitmq-cluster.sh stop     # stop the nodes and remove their data
#
#   export AMQP_URL=$(scripts/rabbitmq-cluster.sh start)
#
# Nodes rabbit-cluster-5681..5683@localhost, AMQP on 127.0.0.1:5681..5683 (guest/guest),
# Erlang distribution on 25681..25683, data in $TMPDIR/rabbitmq-cluster (or /tmp). Set
# RABBIT_CLUSTER_PORT (the first AMQP port) and RABBIT_CLUSTER_DIR for another cluster.
# Every command is safe to repeat; they take turns on one cluster. The nodes run on
# after this script ends, and the sweep of testkit::RabbitNode leaves them alone.
# Needs rabbitmq-server installed (scripts/services.sh installs it), not root.
#
# The work is done by testkit's `rabbitmq-cluster` binary (which reuses
# testkit::RabbitNode); RABBIT_CLUSTER_BIN names a built one to run instead of cargo.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

if [ -n "${RABBIT_CLUSTER_BIN:-}" ]; then
    exec "$RABBIT_CLUSTER_BIN" "$@"
fi
exec cargo run --quiet --manifest-path "$root/Cargo.toml" -p testkit --bin rabbitmq-cluster -- "$@"
