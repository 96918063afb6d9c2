#!/bin/bash
# The libFuzzer targets (tests/fuzz/): each fuzzed for FUZZ_SECONDS (30 by
# default here; `make fuzz` runs 600), then every saved crash input in
# tests/fuzz/regressions/ replayed.  tests/fuzz/run.sh prints the TAP lines.
cd "$(dirname "$0")/../.." || exit 1
exec sh tests/fuzz/run.sh "${FUZZ_SECONDS:-30}"
