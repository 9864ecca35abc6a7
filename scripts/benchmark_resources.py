#!/usr/bin/env python3
"""Does speakertag stay within bounded memory on thousands of small files?

    python scripts/benchmark_resources.py [--files 3000] [--steps 20]

Generates --files short WAV clips (1.5 s at 16 kHz, voice-like tones; two thirds "positive",
one third "negative") in a temporary folder, then, each in a fresh process:

1. decodes every clip one after another, keeping nothing, and prints the RSS and the number
   of open file descriptors after 10 %, 50 % and 100 % of them: both must stay flat (nothing
   leaks per file: no open file, no decoder, no buffer);
2. runs `speakertag train` on all of them with --steps steps and prints the wall time and
   the peak RSS next to the size of the decoded audio, which training holds in memory (its
   memory grows with the amount of audio, not with the number of files).

It prints figures and asserts nothing. For long films, see benchmark_speed.py --hours.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

RATE_HZ = 16000
CLIP_S = 1.5
MODEL_RATE_HZ = 22050

DECODE = r"""
import json, os, sys
from pathlib import Path
from speakertag.audio import load_audio

def rss_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024

files = sorted(Path(sys.argv[1]).rglob("*.wav"))
marks = {len(files) // 10, len(files) // 2, len(files)}
rows = []
for i, f in enumerate(files, 1):
    load_audio(f, 22050)
    if i in marks:
        rows.append({"files": i, "rss_mb": round(rss_mb()), "open_fds": len(os.listdir("/proc/self/fd"))})
print(json.dumps(rows))
"""

# Peak RSS from /proc (VmHWM): ru_maxrss would also count the parent's, inherited across exec.
TRAIN = r"""
import json, sys
from speakertag.cli import main
main(sys.argv[1:])
print(json.dumps({"peak_rss_mb": round(int(next(l for l in open("/proc/self/status")
                                                if l.startswith("VmHWM")).split()[1]) / 1024)}))
"""


def voice_like(f0_hz: float, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32: a harmonic tone gliding around f0, with syllable-rate bursts and noise."""
    t = np.arange(int(CLIP_S * RATE_HZ)) / RATE_HZ
    f0 = f0_hz * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE_HZ
    x = sum(np.sin(h * phase) / h for h in range(1, 8))
    x = x * np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t), 0.1, None) + 0.02 * rng.standard_normal(len(t))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def make_clips(root: Path, n_files: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    pos, neg = root / "positive", root / "negative"
    for i in range(n_files):
        negative = i % 3 == 2
        folder = (neg if negative else pos) / f"part{i // 500:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        f0 = rng.uniform(160, 260) if negative else rng.uniform(105, 125)
        sf.write(str(folder / f"clip{i:05d}.wav"), voice_like(f0, rng), RATE_HZ, subtype="PCM_16")
    return pos, neg


def run_child(code: str, *args: str) -> dict | list:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "child failed")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=3000, help="number of clips")
    ap.add_argument("--steps", type=int, default=20, help="training steps")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        pos, neg = make_clips(tmp / "clips", args.files)
        audio_mb = args.files * CLIP_S * MODEL_RATE_HZ * 4 / 1e6
        print(f"{args.files} clips of {CLIP_S:g} s written in {time.perf_counter() - t:.0f} s "
              f"({audio_mb:.0f} MB of float32 once decoded at {MODEL_RATE_HZ} Hz)")

        t = time.perf_counter()
        rows = run_child(DECODE, str(tmp / "clips"))
        print(f"decode one after another ({time.perf_counter() - t:.0f} s): "
              + ", ".join(f"after {r['files']} files RSS {r['rss_mb']} MB, {r['open_fds']} open fds" for r in rows))

        t = time.perf_counter()
        r = run_child(TRAIN, "train", "--positive", str(pos), "--negative", str(neg), "--out", str(tmp / "model"),
                      "--steps", str(args.steps), "--quiet")
        print(f"train on {args.files} files, {args.steps} steps: {time.perf_counter() - t:.0f} s wall, "
              f"peak RSS {r['peak_rss_mb']} MB (decoded audio {audio_mb:.0f} MB)")


if __name__ == "__main__":
    main()
