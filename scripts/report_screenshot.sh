#!/usr/bin/env bash
# Rebuild docs/report.png: the demo's report for the example film, rendered by headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f out/movie01.report.html ] || ./scripts/demo.sh
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars --user-data-dir="$profile" \
    --window-size=1280,840 --screenshot="$PWD/docs/report.png" "file://$PWD/out/movie01.report.html" 2>/dev/null
echo "docs/report.png written" >&2
