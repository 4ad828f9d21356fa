#!/usr/bin/env bash
# Installs the real components the end-to-end tests start: nothing is mocked where the
# real thing is cheap to start. Idempotent: it only installs what is missing.
set -euo pipefail
need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
true
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing ${need_apt[*]}; run as root (or install them) first" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
