#!/usr/bin/env bash
# Create .venv and install lth with the demo model and data. torch is installed first and pinned:
# a bare `torch` (or a loose range) pulls several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet torch==2.13.0
.venv/bin/pip install --quiet -e '.[demo,test]'
