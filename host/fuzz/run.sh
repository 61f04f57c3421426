#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) from the corpus in corpus/.
# Usage: host/fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# libFuzzer's instrumentation flags are unstable; this lets the stable toolchain pass them.
export RUSTC_BOOTSTRAP=1
# libFuzzer adds what it finds to the corpus it runs on: run on a copy, so the seeds kept
# in the repository stay small.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in envelope manifest schema_check; do
  echo "== fuzzing $target for ${seconds}s"
  cp -r "corpus/$target" "$work/$target"
  cargo fuzz run --sanitizer none "$target" "$work/$target" -- -max_total_time="$seconds" -rss_limit_mb=4096
done
