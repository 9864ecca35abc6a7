#!/usr/bin/env bash
# Learn the example voice from data/example, tag the example film, score it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
st=.venv/bin/speakertag
mkdir -p out
echo "== training on data/example/positive (target) and data/example/negative (others)"
$st train --positive data/example/positive --negative data/example/negative --out out/example-model
echo "== tagging data/example/movie01.mp4"
$st tag data/example/movie01.mp4 --model out/example-model --format csv --out out/movie01.csv --quiet
$st tag data/example/movie01.mp4 --model out/example-model --quiet --report out/movie01.report.html
echo "== scoring against the ground truth (data/example/ref/movie01.target.csv)"
$st evaluate --reference data/example/ref/movie01.target.csv --hypothesis out/movie01.csv
echo "== open out/movie01.report.html in a browser: the score over time, the segments, a player"
