#!/usr/bin/env bash
# Benchmark (not a test): `lodge cp` of a 64 MiB file into and out of a
# guest against the raw rate of its agent channel, as ratios (median of
# 3 rounds; the raw channel is measured as scripts/bench-exec.sh does: the
# benchmark-only /instances/{id}/agent/throughput route moves the same
# bytes through the agent protocol's framing and flow control, no files,
# no WebSocket, no CLI). The exec part of bench-exec.sh is skipped.
#
# usage: scripts/bench-cp.sh   (SIZE_MIB, CP_RUNS, LODGE_BIN as bench-exec.sh)
set -euo pipefail
RUNS=0 SIZE_MIB="${SIZE_MIB:-64}" exec "$(dirname "$0")/bench-exec.sh"
