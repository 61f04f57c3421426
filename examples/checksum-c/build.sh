#!/bin/sh
# Builds checksum.wasm: C bindings from the WIT (wit-bindgen c), compiled by clang against
# wasi-libc, linked by wasm-ld, made a component by `wasm-tools component new`.
# The preview-1 adapter is $WASI_ADAPTER (`cargo xtask examples` writes it from the
# wasi-preview1-component-adapter-provider crate of the host's wasmtime version).
# Needs (Debian): clang lld wasi-libc libclang-rt-dev-wasm32 libjsmn-dev, and on PATH (or
# named by $WIT_BINDGEN / $WASM_TOOLS): wit-bindgen 0.57.1 and wasm-tools 1.263.0.
set -eu
cd "$(dirname "$0")"
WIT=${WIT:-../../wit}
mkdir -p gen
"${WIT_BINDGEN:-wit-bindgen}" c "$WIT" --world job-plugin --out-dir gen
cp /usr/include/jsmn.h gen/
clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
  -Wno-unused-parameter -Igen \
  -o gen/checksum.core.wasm checksum.c gen/job_plugin.c gen/job_plugin_component_type.o
# wasi-libc (stdio, malloc) imports WASI preview 1: the reactor adapter maps it onto preview 2.
"${WASM_TOOLS:-wasm-tools}" component new gen/checksum.core.wasm \
  --adapt "wasi_snapshot_preview1=${WASI_ADAPTER:-$HOME/.cache/jobhost/tools/wasi_snapshot_preview1.reactor.wasm}" -o checksum.wasm
"${WASM_TOOLS:-wasm-tools}" validate checksum.wasm
echo "built $(pwd)/checksum.wasm"
