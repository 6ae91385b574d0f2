#!/usr/bin/env bash
# TRL 1.16 for the side-by-side benchmarks, in its own venv (never a dependency of lightning-post).
set -euo pipefail
cd "$(dirname "$0")"
[ -x .trl-venv/bin/python ] || python3 -m venv .trl-venv
PIP=(.trl-venv/bin/python -m pip install --disable-pip-version-check -q)
.trl-venv/bin/python -c "import torch" 2>/dev/null || "${PIP[@]}" torch==2.13.0
"${PIP[@]}" "trl==1.16.0" "transformers==5.24.0" "peft==0.21.2" "datasets==5.2.0"
echo "TRL $(.trl-venv/bin/python -c 'import trl; print(trl.__version__)') is set up in benchmarks/.trl-venv"
