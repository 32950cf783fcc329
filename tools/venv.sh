#!/usr/bin/env bash
# Create .venv (once) and install this package with its dev extras into it.
# Re-installs when pyproject.toml is newer than the last install. Sourced by the other scripts.
# Says so on stderr before installing; pip's own output goes to stderr too, with progress when
# stderr is a terminal and quiet otherwise (CI logs), so the callers' stdout stays theirs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    "$PY" -m venv "$ROOT/.venv"
fi
STAMP="$ROOT/.venv/.installed"
INSTALL_REASON=""
if [ ! -f "$STAMP" ]; then
    INSTALL_REASON="first run: about a minute"
elif [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    INSTALL_REASON="pyproject.toml changed"
fi
if [ -n "$INSTALL_REASON" ]; then
    echo "installing cimstack with its dev extras into .venv ($INSTALL_REASON)..." >&2
    PIP_VERBOSITY="--quiet"
    if [ -t 2 ]; then
        PIP_VERBOSITY="--progress-bar=on"
    fi
    "$ROOT/.venv/bin/python" -m pip install "$PIP_VERBOSITY" --disable-pip-version-check \
        -e "$ROOT[dev]" >&2 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    touch "$STAMP"
fi
