#!/usr/bin/env bash
# jobhost on PostgreSQL beside Graphile Worker and pg-boss, on one PostgreSQL server (a fresh
# database each), no-op jobs, in one run. Durable commits: fsync and synchronous_commit on.
# Usage: bench/postgres/run.sh [N] [C] [PEER_C]   (defaults N=50000, C=4 for jobhost,
#        PEER_C=50 for the Node peers, whose workers are I/O-bound)
# Prints one `peer=... key=value` line per system on stdout (median.py works on them:
#   for i in 1 2 3; do bench/postgres/run.sh; done | ../shared/bench/peers/median.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-50000}
C=${2:-4}
PEER_C=${3:-50}
PROBE=${PEERS_PROBE:-200}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -p jobhost >&2
cargo build -p jobhost-tests >&2   # the no-op fixture guest
(cd bench/postgres && [ -d node_modules ] || npm install --no-audit --no-fund >&2)
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
tmp=$(mktemp -d)
handlers="$tmp/handlers"
mkdir -p "$handlers"
cp "$target"/wasm-guests/wasm32-wasip2/release/noop.wasm "$handlers/"
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); chown postgres "$tmp"; fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$bin/initdb" -D "$tmp/data" -A trust -U bench --no-sync >/dev/null
"${as_pg[@]}" "$bin/pg_ctl" -D "$tmp/data" -l "$tmp/pg.log" -w -o "-p $port -h 127.0.0.1 -k $tmp -c fsync=on -c synchronous_commit=on -c max_connections=200" start >&2
trap '"${as_pg[@]}" "$bin/pg_ctl" -D "$tmp/data" -m fast stop >&2 || true; rm -rf "$tmp"' EXIT
db() { "$bin/createdb" -h 127.0.0.1 -p "$port" -U bench "$1"; echo "postgres://bench@127.0.0.1:$port/$1"; }
JOBHOST_BENCH_DB=$(db jobhost) JOBHOST_BENCH_LABEL=jobhost-postgres \
  python3 bench/throughput.py "$target/release/jobhost" "$handlers" "$N" "$C" "$PROBE"
node bench/postgres/graphile_bench.mjs "$(db graphile)" "$N" "$PEER_C" "$PROBE"
node bench/postgres/pgboss_bench.mjs "$(db pgboss)" "$N" "$PEER_C" "$PROBE"
