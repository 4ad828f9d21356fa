#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: installs what the end-to-end tests need
# (when missing), builds once, and runs unit and spawn-based tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo test --workspace --locked --features test-hooks
