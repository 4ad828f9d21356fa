#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: installs what the end-to-end tests need
# (when missing), builds once, and runs unit and spawn-based tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
# The release-profile build that tests/release_profile.rs runs (with the test hooks, in a
# target folder of its own so that it is never taken for a build to deploy).
cargo build --release --locked --features test-hooks --bins --target-dir target/hooks
export FORMWARDEN_RELEASE_BINS="$PWD/target/hooks/release"
# The release archive for shared hosting (static musl build), checked by
# tests/release_archive.rs.
FORMWARDEN_RELEASE_ARCHIVE="$PWD/$(bash scripts/release.sh | tail -n 1)"
export FORMWARDEN_RELEASE_ARCHIVE
# Every fuzz target briefly from the committed corpus, with AFL++ (fuzz/; the corpus and the
# regressions are replayed without AFL by the fuzz crate's test below).
bash scripts/fuzz.sh brief
# With the Redis store compiled in: tests/shared_store.rs runs two runtime roots against one
# redis-server; every other test runs the same executables on the file store.
cargo test --workspace --locked --features test-hooks,redis
