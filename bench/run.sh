#!/usr/bin/env bash
# jobhost beside BullMQ and Huey on the same no-op workload, in one run.
# Usage: bench/run.sh [N] [C]   (defaults N=100000, C=4 for jobhost; the peers use their
#        own default C=50, which suits their I/O-bound workers)
# Prints one `peer=... key=value` line per system on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
C=${2:-4}
cargo build --release -p jobhost >&2
cargo xtask examples >&2
target=${CARGO_TARGET_DIR:-target}
handlers=$(mktemp -d)
trap 'rm -rf "$handlers"' EXIT
# The no-op fixture guest, alone in a plugins folder.
cargo build -p jobhost-tests >&2
cp "$target"/wasm-guests/wasm32-wasip2/release/noop.wasm "$handlers/"
python3 bench/throughput.py "$target/release/jobhost" "$handlers" "$N" "$C"
if [ -x ../shared/bench/peers/run.sh ] || [ -f ../shared/bench/peers/run.sh ]; then
  bash ../shared/bench/peers/run.sh "$N"
fi
