#!/usr/bin/env python3
"""Generate quick-exchange scenes for measuring segment edges, laid out as a dev data set.

    python scripts/make_scenes.py ../shared/data/pretrain-sc --out /tmp/scenes [--scenes 4] [--seed 0]

Each scene is a task folder that scripts/benchmark_quality.py reads (`--film movie01.flac`):
a target and one to three other voices of the same estimated sex take turns of one to four
words with gaps of 0.1-1 s, over a bed of synthetic music, the babble of four other voices
and pink room tone, at 10-15 dB; `ref/movie01.csv` names every turn's speaker,
`ref/movie01.target.csv` the target's. The target's first two files, cut into clips of four words,
are its training clips, the rest of its speech goes into the scene; six voices heard in no scene, one file each, and two
generated beds are the negatives.

The voices are Speech Commands speakers (pretrain-sc): the shipped base never trained on them,
they are not the calibration impostors, and they are not telephone-band. Sex is not given by
the corpus: it is estimated from the median F0 (under 165 Hz: male). Keep these scenes out of
anything tuned: they are a yardstick.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from speakertag.augment import coloured_noise, rms, synthetic_music

RATE_HZ = 16000
FRAME = 320  # 20 ms
TRAIN_FILES = 2  # of the target's files (about 12 s each), the rest go into its scene


def load(path: Path) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    return x if sr == RATE_HZ else librosa.resample(x, orig_sr=sr, target_sr=RATE_HZ)


def words(x: np.ndarray, min_pause_s: float = 0.2) -> list[tuple[int, int]]:
    """[start, end) samples of the stretches louder than 35 dB under the loudest 20 ms,
    split at pauses of at least min_pause_s."""
    n = len(x) // FRAME
    level = 20 * np.log10(np.sqrt(np.mean(x[:n * FRAME].reshape(n, FRAME) ** 2, axis=1)) + 1e-9)
    loud = level >= level.max() - 35
    out: list[list[int]] = []
    for i in np.flatnonzero(loud):
        if out and i - out[-1][1] < min_pause_s * RATE_HZ / FRAME:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return [(a * FRAME, b * FRAME) for a, b in out if b - a >= 5]


def median_f0_hz(x: np.ndarray) -> float:
    f0 = librosa.yin(x, fmin=60, fmax=400, sr=RATE_HZ, frame_length=1024)
    energy = librosa.feature.rms(y=x, frame_length=1024, hop_length=256)[0][:len(f0)]
    return float(np.median(f0[energy >= np.median(energy)]))


def speakers(corpus: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(d.glob("*.opus")) for d in sorted(corpus.iterdir())
            if d.is_dir() and any(d.glob("*.opus"))}


def turns_of(files: list[Path]) -> list[np.ndarray]:
    """A speaker's speech cut into turns of one to four consecutive words (with their pauses)."""
    out = []
    rng = np.random.default_rng(len(files))
    for f in files:
        x = load(f)
        w = words(x)
        i = 0
        while i < len(w):
            k = int(rng.integers(1, 5))
            a, b = w[i][0], w[min(i + k, len(w)) - 1][1]
            out.append(x[a:b])
            i += k
    return out


def bed(n: int, babble: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    music = np.concatenate([synthetic_music(8 * RATE_HZ, RATE_HZ, rng) for _ in range(n // (8 * RATE_HZ) + 1)])[:n]
    talk = np.zeros(n, np.float32)
    for b in babble:
        talk += np.resize(b, n) / max(rms(b), 1e-6)
    room = coloured_noise(n, 1.0, rng)
    return (music / max(rms(music), 1e-6) + 0.3 * talk / max(rms(talk), 1e-6)
            + 0.1 * room / max(rms(room), 1e-6)).astype(np.float32)


def make_scene(folder: Path, target: str, others: list[str], files: dict[str, list[Path]], babble: list[np.ndarray],
               negatives: list[Path], rng: np.random.Generator) -> dict:
    for sub in ("train/positive", "train/negative", "test", "ref"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    # The training files cut into clips of a few words, as a user's clips of lines would be.
    for i, f in enumerate(files[target][:TRAIN_FILES]):
        x = load(f)
        w = words(x)
        for j in range(0, len(w), 4):
            sf.write(folder / "train/positive" / f"{i}_{j:02d}.flac", x[w[j][0]:w[min(j + 4, len(w)) - 1][1]], RATE_HZ)
    for f in negatives:
        sf.write(folder / "train/negative" / f"speech__{f.parent.name}.flac", load(f), RATE_HZ)
    for i in range(2):
        b = bed(10 * RATE_HZ, [], rng)
        sf.write(folder / "train/negative" / f"nonspeech__{i}.flac", 0.5 * b / np.abs(b).max(), RATE_HZ)
    pools = {s: turns_of(files[s][TRAIN_FILES:] if s == target else files[s]) for s in [target] + others}
    for s in pools:
        rng.shuffle(pools[s])
    # Every voice speaks in turn, never twice in a row, the target about as often as the others together.
    pieces, rows, t, last = [], [], 0.5, None
    while pools[target]:
        choices = [s for s in pools if pools[s] and s != last]
        if not choices:
            break
        s = target if target in choices and (last != target and rng.random() < 0.5) else str(rng.choice(choices))
        x = pools[s].pop() * 10 ** (rng.uniform(-3, 3) / 20)
        pieces.append((int(t * RATE_HZ), x))
        rows.append((round(t, 3), round(t + len(x) / RATE_HZ, 3), s))
        t += len(x) / RATE_HZ + rng.uniform(0.1, 1.0)
        last = s
    n = int((t + 0.5) * RATE_HZ)
    speech = np.zeros(n, np.float32)
    for at, x in pieces:
        speech[at:at + len(x)] += x
    active = np.concatenate([x for _, x in pieces])
    snr_db = float(rng.uniform(10, 15))
    noise = bed(n, babble, rng)
    film = speech / rms(active) + noise / rms(noise) * 10 ** (-snr_db / 20)
    sf.write(folder / "test/movie01.flac", (0.9 * film / np.abs(film).max()).astype(np.float32), RATE_HZ)
    for name, keep in (("movie01.csv", lambda r: True), ("movie01.target.csv", lambda r: r[2] == target)):
        with open(folder / "ref" / name, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["start", "end", "speaker"])
            w.writerows(r for r in rows if keep(r))
    task = {"target": target, "others": others, "snr_db": round(snr_db, 1),
            "target_s": round(sum(b - a for a, b, s in rows if s == target), 1),
            "other_s": round(sum(b - a for a, b, s in rows if s != target), 1), "duration_s": round(n / RATE_HZ, 1)}
    (folder / "task.json").write_text(json.dumps(task, indent=1) + "\n")
    return task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path, help="the Speech Commands speakers (pretrain-sc)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-speech-s", type=float, default=30.0, help="a target's speech in all its files")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    files = speakers(args.corpus)
    speech_s = {r["speaker_id"]: float(r["speech_s"]) for r in csv.DictReader(open(args.corpus / "speakers.csv"))}
    rich = [s for s in files if speech_s.get(s, 0) >= args.min_speech_s and len(files[s]) > TRAIN_FILES]
    sex = {s: "M" if median_f0_hz(load(files[s][0])) < 165 else "F" for s in rich}
    print(f"{len(rich)} voices with {args.min_speech_s:g} s: {sum(v == 'F' for v in sex.values())} F, "
          f"{sum(v == 'M' for v in sex.values())} M (estimated)")
    used: set[str] = set()
    for i in range(args.scenes):
        want = "FM"[i % 2]
        if sum(s not in used and sex[s] == want for s in rich) < 2:
            want = "MF"[i % 2]  # most Speech Commands voices are men's
        free = [s for s in rich if s not in used and sex[s] == want]
        if len(free) < 2:
            raise SystemExit(f"not enough unused voices for scene {i}")
        pick = [str(s) for s in rng.choice(free, size=min(len(free), int(rng.integers(2, 5))), replace=False)]
        used.update(pick)
        rest = [s for s in files if s not in used and s not in rich]
        extra = [str(s) for s in rng.choice(rest, size=10, replace=False)]
        used.update(extra)
        babble = [load(files[s][0]) for s in extra[:4]]
        negatives = [files[s][0] for s in extra[4:]]
        task = make_scene(args.out / f"s{i}_{pick[0]}", pick[0], pick[1:], files, babble, negatives, rng)
        print(f"s{i}_{pick[0]}: {want}, {len(pick)} voices, target {task['target_s']} s, others {task['other_s']} s, "
              f"{task['duration_s']} s at {task['snr_db']} dB", flush=True)


if __name__ == "__main__":
    main()
