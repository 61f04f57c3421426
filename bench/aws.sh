#!/usr/bin/env bash
# The host's own time on SQS (beside the SQLite queue) and the Lambda cold start, in one run
# on loopback (moto and cargo-lambda's emulator from the tools venv that the xtask installs),
# and the send-to-done latency of one job at a time on an idle SQS queue.
# Usage: bench/aws.sh [N] [RUNS]   (defaults N=2000 messages, RUNS=15 cold starts)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p jobhost >&2
cargo xtask examples >&2   # installs the tools venv (moto, cargo-lambda) if missing
cargo build -p jobhost-tests >&2   # the fixture guests
target=${CARGO_TARGET_DIR:-target}
tools=${JOBHOST_TOOLS:-$HOME/.cache/jobhost/tools}
"$tools/py/bin/python" bench/aws.py "$target/release/jobhost" \
  "$target/wasm-guests/wasm32-wasip2/release" "${1:-2000}" "${2:-15}"
