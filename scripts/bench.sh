#!/usr/bin/env bash
# The project's benchmark (issue 10): one run prints every figure and every comparison as a
# ratio inside that run (these machines are shared and noisy), then the targets as
# PASS/MISS, and writes the figures into docs/PERFORMANCE.md (between its marks).
#
#   bash scripts/bench.sh            the full run (about 10-15 minutes after the builds)
#   bash scripts/bench.sh --quick    a smoke run: every section with small counts; it
#                                    leaves docs/PERFORMANCE.md alone
#   BENCH_ONLY=cgi,nginx bash scripts/bench.sh     some sections only (see scripts/bench.py)
#
# Runs on a fresh Debian machine as root: installs what it needs (nginx, fcgiwrap,
# spawn-fcgi and redis-server through scripts/install-test-deps.sh; wrk, strace, a C
# compiler and musl-tools through apt; perf is used when present and working). Builds, one cargo build at a time: the glibc release build with
# the test-only answer header (target/hooks, shared with the suite; contact POSTs need the
# answer), the same with the Redis store (target/hooks-redis), and the static release
# archive (scripts/release.sh, unpacked into target/bench-static). Load only ever goes to
# 127.0.0.1; every server it starts is its own, on a free loopback port, and is stopped at
# the end.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=""
for arg in "$@"; do
  [ "$arg" = "--quick" ] && quick=1
done

# What the run needs besides cargo.
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if ! have nginx || ! have fcgiwrap || ! have spawn-fcgi || ! have redis-server; then
  bash scripts/install-test-deps.sh
fi
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v cc >/dev/null || need_apt+=(gcc libc6-dev)
command -v musl-gcc >/dev/null || need_apt+=(musl-tools)
command -v python3 >/dev/null || need_apt+=(python3)
# System-call counts per request (--profile); perf samples too where perf works here.
command -v strace >/dev/null || need_apt+=(strace)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench: missing ${need_apt[*]}; run as root (or install them) first" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"

cargo build --release --locked --features test-hooks --bins --target-dir target/hooks
# The same with the Redis store, for the files-against-Redis section (its own target folder,
# so that the suite's release build stays the default one).
cargo build --release --locked --features test-hooks,redis --bins --target-dir target/hooks-redis
# The static release archive, always through scripts/release.sh (cargo rebuilds only what
# changed), so that the figures are never those of a stale archive.
archive=$(bash scripts/release.sh | tail -n 1)
rm -rf target/bench-static && mkdir -p target/bench-static
tar -xzf "$archive" -C target/bench-static
static=$(find target/bench-static -mindepth 1 -maxdepth 1 -type d | head -n 1)

# The floor probe (scripts/floor.c) in both linkages, so that each build is compared with
# a floor linked the same way, and the peak-memory helper (scripts/rss.c), static so that
# what it adds to a child's peak before the exec is as small as it gets.
mkdir -p target/bench
cc -O2 -o target/bench/floor scripts/floor.c
musl-gcc -O2 -static -o target/bench/floor-static scripts/floor.c
musl-gcc -O2 -static -o target/bench/rss scripts/rss.c

doc=()
[ -n "$quick" ] || [ -n "${BENCH_ONLY:-}" ] || doc=(--doc docs/PERFORMANCE.md)
python3 scripts/bench.py target/hooks/release --static "$static" \
  --redis-bindir target/hooks-redis/release --only "${BENCH_ONLY:-cgi,contention,floods,nginx,store}" \
  --profile "${doc[@]}" "$@"
