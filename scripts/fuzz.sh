#!/usr/bin/env bash
# Fuzzing with AFL++ through cargo-afl (stable toolchain; see fuzz/src/lib.rs for the
# targets). Installs cargo-afl and builds AFL++ when missing, builds the instrumented
# targets, and then:
#   brief [seconds]         every target for a few seconds from the committed corpus (CI);
#                           fails on any crash or hang
#   long <target> [execs]   one target up to `execs` executions (default 10,000,000); prints
#                           the figures docs/RELIABILITY.md records
#   cmin <target>           minimizes the corpus from the last long run into fuzz/corpus/
# Output goes to target/fuzz-out/. Run one fuzzer at a time: each takes a core.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=(form cgi_request fastcgi config state preview_head)
OUT=target/fuzz-out
BIN=target/afl/release

# CI-safe AFL settings: no CPU governor or core_pattern demands, no UI, no CPU pinning
# (the machine is shared), and no prompt on a missing crash handler.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1

setup() {
  if ! cargo afl --version >/dev/null 2>&1; then
    cargo install cargo-afl --version 0.18.2 --locked
  fi
  # AFL++ itself is built from source by cargo-afl; it needs make and a C compiler.
  # (`afl-fuzz -h` exits non-zero even when it is there: look for its usage line.)
  if ! (cargo afl fuzz -h 2>&1 || true) | grep -q 'afl-fuzz'; then
    if ! command -v make >/dev/null || ! command -v cc >/dev/null; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends make gcc libc6-dev >/dev/null
    fi
    cargo afl config --build
  fi
  # A target folder of its own: the instrumented build must never mix with the plain one.
  cargo afl build --release --locked -p formwarden-fuzz --features afl --target-dir target/afl
}

stat() { sed -n "s/^$1 *: *//p" "$2"; }

# run <target> <out dir> <afl limit args...>
run() {
  local t=$1 dir=$2
  shift 2
  rm -rf "$dir"
  mkdir -p "$dir"
  cargo afl fuzz -i "fuzz/corpus/$t" -o "$dir" "$@" -- "$BIN/$t" >"$dir/log" 2>&1 || {
    tail -n 30 "$dir/log" >&2
    echo "fuzz.sh: afl-fuzz failed on $t" >&2
    return 1
  }
}

case "${1:-}" in
brief)
  secs=${2:-8}
  setup
  failed=0
  for t in "${TARGETS[@]}"; do
    run "$t" "$OUT/brief/$t" -V "$secs"
    s="$OUT/brief/$t/default/fuzzer_stats"
    crashes=$(stat saved_crashes "$s")
    hangs=$(stat saved_hangs "$s")
    echo "fuzz.sh: $t: $(stat execs_done "$s") execs in ${secs} s, crashes $crashes, hangs $hangs"
    if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
      echo "fuzz.sh: $t found something: $OUT/brief/$t/default/{crashes,hangs}/" >&2
      failed=1
    fi
  done
  exit $failed
  ;;
long)
  t=${2:?target}
  execs=${3:-10000000}
  setup
  start=$(date +%s)
  run "$t" "$OUT/long/$t" -E "$execs"
  wall=$(($(date +%s) - start))
  s="$OUT/long/$t/default/fuzzer_stats"
  done_=$(stat execs_done "$s")
  echo "fuzz.sh: $t: execs $done_, wall ${wall} s, execs/s $((done_ / (wall > 0 ? wall : 1))), corpus $(stat corpus_count "$s"), crashes $(stat saved_crashes "$s"), hangs $(stat saved_hangs "$s")"
  ;;
cmin)
  t=${2:?target}
  rm -rf "$OUT/cmin/$t"
  mkdir -p "$OUT/cmin"
  # The shell afl-cmin: AFL++ 4.40c's Python one (what `cargo afl cmin` runs) records no
  # tuples from these persistent-mode targets and keeps nothing.
  afl_bin=$(ls -d "$HOME"/.local/share/afl.rs/rustc-*/afl.rs-*/afl/bin | tail -n 1)
  "$afl_bin/afl-cmin.bash" -i "$OUT/long/$t/default/queue" -o "$OUT/cmin/$t" -- "$BIN/$t" >/dev/null
  rm -rf "fuzz/corpus/$t"
  cp -r "$OUT/cmin/$t" "fuzz/corpus/$t"
  echo "fuzz.sh: $t: $(find "fuzz/corpus/$t" -type f | wc -l) files, $(du -sk "fuzz/corpus/$t" | cut -f1) KiB"
  ;;
*)
  echo "usage: scripts/fuzz.sh brief [seconds] | long <target> [execs] | cmin <target>" >&2
  exit 2
  ;;
esac
