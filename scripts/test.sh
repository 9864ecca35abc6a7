#!/usr/bin/env bash
# Install speakertag with its test extras into .venv and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test
exec .venv/bin/python -m pytest -q "$@"
