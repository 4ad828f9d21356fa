#!/usr/bin/env bash
# Benchmark: prints per-request time of each executable against /bin/true, and lock
# contention figures for 64-process bursts on one key. Figures only; nothing is asserted
# (timings on shared machines are noisy). Builds its own release binaries with the
# test-only answer header (into target/hooks, shared with the suite) so it can measure a full contact POST.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --features test-hooks --bins --target-dir target/hooks
# The dependency-free floor probe the contention figures are compared with.
cc -O2 -o target/hooks/floor scripts/floor.c
# Not exec: the peak-memory figure (RUSAGE_CHILDREN) would otherwise include the build.
python3 scripts/bench.py target/hooks/release "$@"
