#!/usr/bin/env bash
# What metrics and tracing cost: the same no-op drain (bench/throughput.py) with a build from
# before them (BASE_BIN) and with this one, interleaved in one run, then this one with
# Prometheus metrics served, and with spans exported over OTLP to a local sink.
# Usage: bench/observability.sh BASE_BIN NEW_BIN [N] [C] [RUNS]
# Prints each run's result line, then the medians and the ratios to the base.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=$1 NEW=$2 N=${3:-50000} C=${4:-4} RUNS=${5:-5}
target=${CARGO_TARGET_DIR:-target}
handlers=$(mktemp -d)
out=$(mktemp)
sink_port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
python3 bench/otlp-sink.py "$sink_port" & sink=$!
trap 'kill $sink; rm -rf "$handlers" "$out"' EXIT
cp "$target"/wasm-guests/wasm32-wasip2/release/noop.wasm "$handlers/"
for run in $(seq "$RUNS"); do
  JOBHOST_BENCH_LABEL=base python3 bench/throughput.py "$BASE" "$handlers" "$N" "$C" 20 | tee -a "$out"
  JOBHOST_BENCH_LABEL=new python3 bench/throughput.py "$NEW" "$handlers" "$N" "$C" 20 | tee -a "$out"
  JOBHOST_BENCH_LABEL=new+metrics JOBHOST_BENCH_RUN_ARGS="--metrics 127.0.0.1:0" \
    python3 bench/throughput.py "$NEW" "$handlers" "$N" "$C" 20 | tee -a "$out"
  JOBHOST_BENCH_LABEL=new+otlp OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port" \
    python3 bench/throughput.py "$NEW" "$handlers" "$N" "$C" 20 | tee -a "$out"
done
python3 - "$out" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    fields = dict(f.split("=", 1) for f in line.split())
    rows.setdefault(fields["peer"], []).append(float(fields["process_per_s"]))
base = statistics.median(rows["base"])
for peer, values in rows.items():
    median = statistics.median(values)
    per_job_us = (1 / median - 1 / base) * 1e6
    print("%-12s median process_per_s=%.0f ratio_to_base=%.3f extra_us_per_job=%+.2f runs=%s"
          % (peer, median, median / base, per_job_us, [round(v) for v in values]))
PY
