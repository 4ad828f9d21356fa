#!/usr/bin/env bash
# The bot suite as a benchmark (issue 8, item 8): runs tests/bots.rs with FW_BOTS_SCALE
# times the test's attempts per class (default 10: 450 attempts, about 4 minutes) and
# prints its table of delivered, quarantined and refused messages per class. The test
# asserts every message's fate; the rates it prints are what docs/SPAM.md quotes.
#
# Usage: bash scripts/bots.sh [SCALE]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
export FW_BOTS_SCALE="${1:-10}"
echo "bots.sh: scale $FW_BOTS_SCALE; load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
cargo test --locked --features test-hooks --test tests -- bots:: --nocapture --test-threads 1 2>&1 |
  sed -n '/^bot suite/,/^test bots/p' | grep -v '^test bots'
echo "bots.sh: load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
