#!/usr/bin/env python3
"""Mirror a dev data set with each target reference segment cut to the speech inside it.

    python scripts/speech_extents.py ../shared/data/dev --out /tmp/dev-speech [--below-db 25]

The dev references mark each utterance from the start to the end of its source clip, and a
voice-prompt clip carries up to a second of its studio's room tone before and after the words:
the reference counts that as the target speaking. The 5.1 rendition (test/movie01.51.mkv)
holds the dialogue alone in its centre channel, so the words can be found there: in each target
segment, from the first to the last 10 ms frame whose speech-band level (250-4000 Hz) is within
--below-db of the segment's loud frames (its 90th percentile), in runs of at least 50 ms.
Pauses inside a segment stay.

The mirror links every file of each task, except ref/movie01.target.csv, which holds the cut
segments; scripts/benchmark_quality.py and benchmark_enrol.py read it as they read the original.
Scoring against both says which edge errors are words and which are room tone.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
import scipy.signal

from speakertag.audio import decode_blocks, probe
from speakertag.evaluate import read_reference
from speakertag.io_utils import atomic_write_text
from speakertag.segments import runs

FRAME_S = 0.01
MIN_RUN_S = 0.05
RATE_HZ = 16000


def centre_level_db(film: Path) -> np.ndarray:
    """(n_frames,) speech-band level of the centre channel, dB per FRAME_S frame, decoded in blocks."""
    if "FC" not in probe(film).layout[2:]:
        raise SystemExit(f"{film}: no centre channel to read")
    sos = scipy.signal.butter(4, [250, 4000], btype="band", fs=RATE_HZ, output="sos")
    state = np.zeros((sos.shape[0], 2))
    hop = round(FRAME_S * RATE_HZ)
    carry = np.zeros(0)
    levels = []
    for x in decode_blocks(film, RATE_HZ, channels="centre"):
        y, state = scipy.signal.sosfilt(sos, x.astype(np.float64), zi=state)
        y = np.concatenate([carry, y])
        n = len(y) // hop
        levels.append(10 * np.log10(np.mean(y[:n * hop].reshape(n, hop) ** 2, axis=1) + 1e-14))
        carry = y[n * hop:]
    return np.concatenate(levels)


def speech_inside(segments: list[tuple[float, float]], level_db: np.ndarray, below_db: float
                  ) -> list[tuple[float, float]]:
    """Each (start_s, end_s) cut to the first and last MIN_RUN_S run of frames within below_db
    of its loud frames (a click at a clip's edge is no word)."""
    out = []
    for s, e in segments:
        a, b = int(s / FRAME_S), min(int(np.ceil(e / FRAME_S)), len(level_db))
        part = level_db[a:b]
        found = [(i, j) for i, j in runs(part > np.quantile(part, 0.9) - below_db)
                 if j - i >= MIN_RUN_S / FRAME_S] if len(part) else []
        out.append((s, e) if not found else (max(s, (a + found[0][0]) * FRAME_S),
                                             min(e, (a + found[-1][1]) * FRAME_S)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--below-db", type=float, default=25.0)
    args = ap.parse_args()
    for task in sorted(p for p in args.dataset.iterdir() if (p / "ref" / "movie01.target.csv").is_file()):
        ref = read_reference(task / "ref" / "movie01.target.csv")
        cut = speech_inside(ref, centre_level_db(task / "test" / "movie01.51.mkv"), args.below_db)
        mirror = args.out / task.name
        for f in task.rglob("*"):
            dest = mirror / f.relative_to(task)
            if f.is_file() and not dest.exists() and dest.name != "movie01.target.csv":
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.symlink_to(f.resolve())
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        w.writerow(["start", "end"])
        w.writerows([f"{s:.3f}", f"{e:.3f}"] for s, e in cut)
        atomic_write_text(mirror / "ref" / "movie01.target.csv", text.getvalue())
        onset = sum(c[0] - r[0] for r, c in zip(ref, cut))
        offset = sum(r[1] - c[1] for r, c in zip(ref, cut))
        print(f"{task.name}: {len(ref)} target segments, {sum(e - s for s, e in ref):.1f} s; room tone cut "
              f"{onset:.2f} s before the words, {offset:.2f} s after them")


if __name__ == "__main__":
    main()
