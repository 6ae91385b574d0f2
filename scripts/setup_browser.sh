#!/usr/bin/env bash
# Headless Chromium from Debian's packages, for the MLflow UI test (tests/test_mlflow_ui.py). Idempotent; needs root
# (or sudo) and apt. Run by the test's set-up when the browser is missing.
set -euo pipefail
if command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium-headless-shell fonts-dejavu-core >/dev/null
echo "installed $(chromium-headless-shell --version)"
