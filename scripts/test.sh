#!/usr/bin/env bash
# Runs every check the project has, exactly as CI does (.ci/run calls this).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
scripts/tools.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
# A test that needs a tool (prometheus, from scripts/tools.sh; rabbitmq-server, from
# scripts/services.sh when it starts the broker itself) fails where it is missing,
# rather than skipping with a note nobody reads.
export TXOUTBOX_REQUIRE_TOOLS=1

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The alert rules: valid, and their unit tests (deploy/prometheus/alerts.test.yml).
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
# A test that hangs fails the run here, named by cargo's "running for over 60
# seconds", rather than at CI's own limit an hour later.
timeout --kill-after=1m 40m cargo test --workspace || {
  status=$?
  [ "$status" -lt 124 ] || echo "cargo test did not finish in 40 minutes" >&2
  exit "$status"
}
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

# The published crates, as `cargo publish --dry-run --workspace` packages and
# verifies them, without the registry (offline): every file a crate needs is in its
# package, and each package builds on its own. Cargo takes the packages a crate is
# verified against as registry crates, which it never expects to change at the same
# version: it reuses what it unpacked into its home and what it built last time. So
# the check builds in a target folder of its own, and our crates' unpacked copies
# and build records there are removed first; other crates stay built between runs.
package_target=target/package-check
rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/txoutbox-* \
  "$package_target"/debug/.fingerprint/txoutbox-*
CARGO_TARGET_DIR="$package_target" cargo package --offline --allow-dirty --quiet \
  -p txoutbox -p txoutbox-inbox -p txoutbox-saga -p txoutbox-relay

# The exactly-once demo, short, in both saga modes: every kind of fault at least once
# (the broker's restarts too, where rabbitmq-server is installed), verified from the
# databases; a broken invariant fails the run.
cargo build -p txoutbox-relay -p examples --bins
target/debug/exactly-once-demo --short --seed 7 --saga choreography
target/debug/exactly-once-demo --short --seed 7 --saga orchestration
# The same on a three-node cluster of the run's own, its nodes killed one at a time.
if command -v rabbitmq-server >/dev/null || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  target/debug/exactly-once-demo --short --seed 7 --cluster --saga choreography
  target/debug/exactly-once-demo --short --seed 7 --cluster --saga orchestration
else
  echo "exactly-once-demo --cluster: skipped (rabbitmq-server is not installed)"
fi
