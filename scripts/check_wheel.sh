#!/usr/bin/env bash
# Build a wheel, install it into a fresh virtual environment outside the checkout (reusing
# .venv's dependencies), then train on data/example and tag its film from another folder:
# training must fine-tune the base encoder packaged in the wheel, and find the voice.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-deps . -w "$work/wheel" 2>&1 \
    | grep -v "^WARNING: Location" || true
rm -rf build
python3 -m venv "$work/venv"
site=$("$work/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$work"/wheel/*.whl 2>&1 \
    | grep -v "^WARNING: Location" || true
# The dependencies come from .venv's site-packages (a path in a .pth file: .venv's own .pth
# files, among them the editable install of this checkout, are not read).
"$repo/.venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$site/deps.pth"
cd "$work"
bin="$work/venv/bin/speakertag"
"$bin" --version
[ "$(ls "$site/speakertag/base_model/negatives/"*.opus | wc -l)" -ge 40 ] \
    || { echo "error: the wheel lacks the bank of other sounds (speakertag/base_model/negatives)" >&2; exit 1; }
"$bin" train -q --positive "$repo/data/example/positive" --negative "$repo/data/example/negative" \
    --out alice --name alice | tee train.log
grep -q "fine-tuned from $site/speakertag/base_model" train.log \
    || { echo "error: the wheel's training did not fine-tune its packaged base encoder" >&2; exit 1; }
"$bin" tag "$repo/data/example/movie01.mp4" --model alice --out movie01.csv
"$bin" evaluate --reference "$repo/data/example/ref/movie01.target.csv" --hypothesis movie01.csv | tee eval.log
awk '$1 == "F1" { ok = ($2 >= 0.9) } END { exit !ok }' eval.log \
    || { echo "error: the wheel's model found the example voice with F1 under 0.9" >&2; exit 1; }
echo "wheel check passed"
