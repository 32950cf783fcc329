#!/usr/bin/env bash
# Install into .venv if needed, then lint and run the whole test suite. tests/test_install.py
# builds a wheel and installs it into a fresh venv, so the suite needs the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/venv.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
