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
    echo "installing speakertag into .venv (first time: about a minute, about 6 GB with PyTorch)..." >&2
    log=$(mktemp)
    if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}" >"$log" 2>&1; then
        grep -v "^WARNING: Location" "$log" >&2 || true
        rm -f "$log"
        echo "error: pip could not install speakertag into .venv (see above; df -h shows free disk)" >&2
        exit 1
    fi
    rm -f "$log"
    # Import from outside the checkout, so that the installed package and its dependencies are checked.
    (cd / && "$OLDPWD/.venv/bin/python" -c "import speakertag.cli, soundfile, av, faiss, librosa, torchaudio") \
        || { echo "error: speakertag is installed in .venv but does not import" >&2; exit 1; }
    touch "$stamp"
fi
