#!/usr/bin/env bash
# Runs one test command N times in a row and keeps the whole output of every run that
# failed, to find a flaky test's cause from its logs (a failing test prints the logs
# of what it started: docs/guide/testing.md).
#
#   scripts/repeat.sh 30 cargo test -p txoutbox-saga --test orchestrated
#
# Prints one line per run (its number, how long it took, ok or FAILED) and, at the end,
# how many failed and where their output is: target/repeat/<time>/run-<n>.log.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/repeat.sh TIMES COMMAND [ARGS...]" >&2
  exit 2
fi
times="$1"
shift

folder="target/repeat/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$folder"
failed=0
for run in $(seq 1 "$times"); do
  started=$(date +%s)
  if "$@" >"$folder/run-$run.log" 2>&1; then
    rm "$folder/run-$run.log"
    echo "run $run: ok in $(($(date +%s) - started)) s"
  else
    failed=$((failed + 1))
    echo "run $run: FAILED in $(($(date +%s) - started)) s (output: $folder/run-$run.log)"
  fi
done
if [ "$failed" -gt 0 ]; then
  echo "$failed of $times runs failed; their output is in $folder"
else
  rmdir "$folder"
  echo "all $times runs passed"
fi
[ "$failed" -eq 0 ]
