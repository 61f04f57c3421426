#!/bin/sh
# Builds {{name}}.wasm with componentize-py (pinned in requirements.txt): from PATH if it is
# there, else from a venv in .venv made on the first build.
set -eu
cd "$(dirname "$0")"
if command -v componentize-py >/dev/null 2>&1; then
  COMPONENTIZE_PY=componentize-py
else
  [ -x .venv/bin/componentize-py ] || {
    python3 -m venv .venv && .venv/bin/pip install --quiet -r requirements.txt
  }
  COMPONENTIZE_PY=.venv/bin/componentize-py
fi
"$COMPONENTIZE_PY" -d wit -w job-plugin componentize app -o {{name}}.wasm
echo "built $(pwd)/{{name}}.wasm"
