#!/usr/bin/env bash
# Install speakertag with its test and ray extras into .venv and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test,ray  # ray: tests/test_ray.py runs the Ray engine on a local cluster
if [ $# -eq 0 ]; then
    ./scripts/check_wheel.sh  # a wheel installed outside the checkout trains from its packaged base
fi
exec .venv/bin/python -m pytest -q "$@"
