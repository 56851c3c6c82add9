#!/usr/bin/env bash
# Makes sure the tools the tests use beside the servers are installed: Prometheus
# (a real one scrapes a relay, a consumer and an orchestrator in the monitoring
# test) and promtool (checks and unit-tests the alert rules). Installs the Debian
# package when missing; quiet when all is well; safe to run any number of times.
set -euo pipefail

say() { printf 'tools: %s\n' "$*" >&2; }

# shellcheck source=scripts/apt.sh
. "$(dirname "$0")/apt.sh"

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    apt_install --no-install-recommends prometheus
fi

# The console's browser test drives a real headless Chromium over WebDriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt_install --no-install-recommends chromium chromium-driver
fi

# The PostgreSQL failover test makes a primary and a standby of its own: it needs the
# server programs (initdb, pg_ctl, pg_basebackup), not only a server on 5432.
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_install --no-install-recommends postgresql
fi
