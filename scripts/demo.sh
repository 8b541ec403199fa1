#!/usr/bin/env bash
# The main job: set up .venv (torch, fastattr built) and run `fastattr demo`, which
# explains a few bundled images with several methods and writes heatmap grids and
# a summary to ./fastattr-out/demo (extra arguments go to `fastattr demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ -x .venv/bin/fastattr ]; then
  exec .venv/bin/fastattr demo "$@"
else
  exec .venv/bin/python -m fastattr demo "$@"
fi
