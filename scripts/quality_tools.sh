#!/usr/bin/env bash
# Installs what the speech-quality measurements need, where missing: espeak-ng and sox (the
# speech), any further Debian packages named as arguments (e.g. chromium), and PyPI's pesq with
# numpy and scipy (the scoring). Usage: bash scripts/quality_tools.sh [debian-package ...]
set -euo pipefail
missing=()
for tool in espeak-ng sox "$@"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -c "import pesq, numpy, scipy" 2>/dev/null || python3 -m pip install -q pesq numpy scipy
