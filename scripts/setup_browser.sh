#!/usr/bin/env bash
# Headless Chromium from Debian's packages, for the MLflow UI test (tests/test_mlflow_ui.py). Idempotent: nothing to do
# (and no apt, no network) when a Chromium is on PATH. Needs root or password-less sudo, apt-get and the network; when
# it cannot install, it says why on its last line (stderr) and exits 1. Run by scripts/setup.sh as an optional step;
# the test itself never installs anything (it is skipped without a browser).
set -euo pipefail
if command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1; then
  exit 0
fi
fail() { echo "$*" >&2; exit 1; }
command -v apt-get >/dev/null 2>&1 || fail "no apt-get on this machine (not Debian/Ubuntu)"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    fail "not root and no password-less sudo"
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null 2>&1 || fail "apt-get update failed (no network?)"
$SUDO apt-get install -y -qq --no-install-recommends chromium-headless-shell fonts-dejavu-core >/dev/null 2>&1 \
  || fail "apt-get install chromium-headless-shell failed (no network, or no such package in this release's sources)"
command -v chromium-headless-shell >/dev/null 2>&1 || fail "chromium-headless-shell installed but not on PATH"
echo "installed $(chromium-headless-shell --version)"
