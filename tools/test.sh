#!/usr/bin/env bash
# Install into .venv if needed, then lint and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/venv.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
