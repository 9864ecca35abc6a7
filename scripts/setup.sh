#!/usr/bin/env bash
# Create .venv (if missing) and install speakertag into it, with extras if given: setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
stamp=".venv/.installed${extras:+-$extras}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# Reinstall when pyproject.toml changed since the last install.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing speakertag into .venv (first time: about a minute)..." >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}" 2>&1 \
        | grep -v "^WARNING: Location" >&2 || true
    .venv/bin/python -c "import speakertag" || { echo "install failed" >&2; exit 1; }
    touch "$stamp"
fi
