#!/usr/bin/env bash
# Runs the main demo against the local PostgreSQL and RabbitMQ.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

cargo run --quiet --release -p examples --bin order-quickstart -- "$@"
