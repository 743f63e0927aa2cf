#!/usr/bin/env bash
# Create .venv and install vitkit (editable) with the given extras, e.g. `scripts/setup.sh test` or
# `scripts/setup.sh docs` (mkdocs and ruff, for `make docs` / `make lint`).
# On a machine without an NVIDIA GPU, pip is constrained to the CPU build of torch 2.13.0
# (constraints/cpu.txt): an unpinned `torch` would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-data}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
constraints=()
if ! command -v nvidia-smi >/dev/null 2>&1; then
  constraints=(-c constraints/cpu.txt)
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${constraints[@]}" -e ".[${extras}]"
