#!/usr/bin/env bash
# Benchmark: prints per-request time of each executable against /bin/true (the glibc
# build and the static release build side by side), and lock
# contention figures for 64-process bursts on one key, and the files store against the
# Redis store. Figures only; nothing is asserted
# (timings on shared machines are noisy). Builds its own release binaries with the
# test-only answer header (into target/hooks, shared with the suite) so it can measure a full contact POST.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --features test-hooks --bins --target-dir target/hooks
# The same with the Redis store, for the files-against-Redis section (its own target folder,
# so that the suite's release build stays the default one).
cargo build --release --locked --features test-hooks,redis --bins --target-dir target/hooks-redis
command -v redis-server >/dev/null || bash scripts/install-test-deps.sh
# The dependency-free floor probe the contention figures are compared with.
cc -O2 -o target/hooks/floor scripts/floor.c
# The per-process peak-memory helper.
cc -O2 -o target/hooks/rss scripts/rss.c
# The static release archive (scripts/release.sh; reused when built already), unpacked,
# so that the per-request table shows the static build beside the glibc one.
archive=$(ls dist/formwarden-*-x86_64-linux-musl.tar.gz 2>/dev/null | head -n 1 || true)
[ -n "$archive" ] || archive=$(bash scripts/release.sh | tail -n 1)
rm -rf target/bench-static && mkdir -p target/bench-static
tar -xzf "$archive" -C target/bench-static
static=$(find target/bench-static -mindepth 1 -maxdepth 1 -type d | head -n 1)
python3 scripts/bench.py target/hooks/release --static "$static" \
  --redis-bindir target/hooks-redis/release --only "${BENCH_ONLY:-cgi,bursts,sustained,floods,store}" "$@"
