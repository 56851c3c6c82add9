#!/usr/bin/env bash
# Runs the main demo: an order saga across four services under injected broker
# failures, verified exactly-once from the databases. Flags go to the demo, e.g.
#   scripts/demo.sh --orders 2000 --payment-failure-rate 0.3 --fault-rate 1 --seed 42
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

cargo build --quiet --release -p txoutbox-relay -p examples --bins
exec target/release/exactly-once-demo "$@"
