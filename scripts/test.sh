#!/usr/bin/env bash
# Runs the whole test suite against the real ComfyUI runtime installed by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest "$@"
