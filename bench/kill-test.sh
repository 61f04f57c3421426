#!/usr/bin/env bash
# The no-job-lost test at full size: N jobs (default 100,000) on the embedded queue, the
# host killed with SIGKILL ten times at random moments and restarted each time; prints how
# many jobs were claimed more than once. CI runs the same test with 5,000 jobs.
# Usage: bench/kill-test.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p jobhost --bins >&2
JOBHOST_KILL_TEST_JOBS="${1:-100000}" cargo test -p jobhost-tests --test all -- \
  --exact faults::ten_sigkills_at_random_moments_lose_no_job --nocapture
