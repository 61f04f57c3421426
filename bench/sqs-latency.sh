#!/usr/bin/env bash
# Send-to-done latency of one job at a time on an idle SQS queue (moto on loopback), the
# host with its default 20 s long polls: the median of 20 jobs. Uses the dev-profile host
# the tests build (the latency is the receive path's, not the job's).
# Usage: bench/sqs-latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p jobhost >&2
cargo xtask examples >&2   # installs the tools venv (moto) if missing
cargo build -p jobhost-tests >&2   # the fixture guests
target=${CARGO_TARGET_DIR:-target}
tools=${JOBHOST_TOOLS:-$HOME/.cache/jobhost/tools}
"$tools/py/bin/python" bench/aws.py "$target/debug/jobhost" \
  "$target/wasm-guests/wasm32-wasip2/release" --latency-only
