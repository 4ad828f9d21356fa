#!/usr/bin/env bash
# Local preview: builds the release executables, creates var/ with a fresh config (random
# ip_salt, mail written to var/mail-out/) when there is none, and serves the example
# contact page on http://127.0.0.1:8080/ running the real executables as CGI processes.
# No root and no web server needed. Extra arguments go to the preview (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins
exec target/release/preview --root "$PWD" "$@"
