#!/usr/bin/env bash
# Runs the whole test suite against the real ComfyUI runtime installed by scripts/setup.sh.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k inversion`.
set -euo pipefail
cd "$(dirname "$0")/../tests"
exec ../.venv/bin/python -m pytest "$@"
