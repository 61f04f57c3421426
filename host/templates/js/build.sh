#!/bin/sh
# Builds {{name}}.wasm with componentize-js (pinned in package.json).
set -eu
cd "$(dirname "$0")"
[ -x node_modules/.bin/componentize-js ] || npm install --no-audit --no-fund
npm run --silent build
echo "built $(pwd)/{{name}}.wasm"
