#!/usr/bin/env bash
# The nightly soak, not part of CI's run (scripts/test.sh): the exactly-once demo for
# DURATION (default 10m) in each saga mode in turn, with faults throughout, sampling
# every process's memory, descriptors and connections every 10 s; it fails if an
# invariant breaks or a figure grows after the first minute (docs/guide/demo.md#soak).
#   scripts/soak.sh        # 10 minutes each
#   scripts/soak.sh 30m    # half an hour each
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${1:-10m}"
for saga in choreography orchestration; do
  echo "soak: $duration, $saga"
  scripts/demo.sh --soak "$duration" --saga "$saga" --seed 7
done
