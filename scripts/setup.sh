#!/usr/bin/env bash
# Set up interp from nothing: ./.venv, torch (CPU build) first, the package with test extras, chromium for figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# pip, quiet, minus known-harmless noise: this machine's pip config lists a local index folder that may be absent
# ("Location '...' is ignored: it is neither a file nor a directory"), and setuptools prints a banner on every
# editable install (a UserWarning, silenced for pip's build subprocesses only). pip's exit status is kept.
pip_install() {
  PYTHONWARNINGS="ignore::UserWarning" "$VPY" -m pip install -q "$@" 2>&1 \
    | { grep -v -e "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}
pip_install --upgrade pip
# torch first: without a pin in its own call pip resolves a multi-GB CUDA build.
pip_install "torch==2.13.0"
pip_install -e ".[test]" "torch==2.13.0"
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian chromium for static figure export (PNG/PDF/SVG)"
    (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
      || echo "setup: could not install chromium; figures will be written as HTML only"
  else
    echo "setup: chromium missing and not root; figures will be written as HTML only (install chromium for PNG/PDF/SVG)"
  fi
fi
echo "setup: done ($("$VPY" -c 'import torch, transformers, transformer_lens, nnsight, sae_lens; print("torch", torch.__version__, "transformers", transformers.__version__)' 2>/dev/null | tail -1))"
