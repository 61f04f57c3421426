#!/bin/sh
# Builds {{name}}.wasm: C bindings from the WIT (wit-bindgen c), clang against wasi-libc,
# then `wasm-tools component new`. Needs (Debian): clang lld wasi-libc libclang-rt-dev-wasm32
# libjsmn-dev; and wit-bindgen 0.57.1 and wasm-tools 1.263.0 on PATH (or $WIT_BINDGEN,
# $WASM_TOOLS): `cargo install --locked wit-bindgen-cli@0.57.1 wasm-tools@1.263.0`.
set -eu
cd "$(dirname "$0")"
mkdir -p gen
"${WIT_BINDGEN:-wit-bindgen}" c wit --world job-plugin --out-dir gen
cp /usr/include/jsmn.h gen/
clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
  -Wno-unused-parameter -Igen \
  -o gen/{{name}}.core.wasm {{name}}.c gen/job_plugin.c gen/job_plugin_component_type.o
# wasi-libc (stdio, malloc) imports WASI preview 1: the reactor adapter maps it onto preview 2.
"${WASM_TOOLS:-wasm-tools}" component new gen/{{name}}.core.wasm \
  --adapt "wasi_snapshot_preview1=${WASI_ADAPTER:-adapter/wasi_snapshot_preview1.reactor.wasm}" -o {{name}}.wasm
echo "built $(pwd)/{{name}}.wasm"
