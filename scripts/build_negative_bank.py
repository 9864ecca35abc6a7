#!/usr/bin/env python3
"""Build the bank of other sounds that `speakertag train` learns from when it is given no negatives.

    python scripts/build_negative_bank.py ../shared/data/pretrain ../shared/data/pretrain-more \
        [--out models/base/negatives] [--seed 35]

From the pretraining corpora (folders of one sub-folder per speaker, with a speakers.csv),
never from the speakers of scripts/held_out_speakers.txt (the calibration impostors, which
no training may hear), only from speakers with at least --voice-s seconds: 16 LibriSpeech
readers and 14 speechocean762 speakers (half women, half men), 3 DSPSpeech-20 and 3 Arabic
Speech Commands speakers (their sex is not given), --voice-s seconds of each (from a seeded
random file of theirs on, silence trimmed by the corpus build), peak-normalised. Then
generated sound: synthetic music (augment.synthetic_music), white, pink and brown noise, and
babble (--babble-voices other training speakers summed, none of them in the bank).
Everything is written as Ogg Opus, 16 kHz mono, 24 kb/s, as the impostors are, with a
sources.csv naming each file's speaker, corpus, sex and source file. Seeded: the same
corpora and seed give the same files.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from speakertag.audio import encode_opus, find_media_files, load_audio
from speakertag.augment import coloured_noise, synthetic_music

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_speakers import read_held_out  # noqa: E402

RATE_HZ = 16000
BIT_RATE = 24000
# Voices drawn per corpus prefix, and whether to balance them by sex.
VOICES = {"lstc": (16, True), "so762": (14, True), "dsp20": (3, False), "arsc": (3, False)}


def speakers(roots: list[Path], held_out: set[str]) -> dict[str, dict]:
    """{speaker_id: speakers.csv row + its folder} of every speaker not held out."""
    found = {}
    for root in roots:
        with open(root / "speakers.csv") as fh:
            for row in csv.DictReader(fh):
                spk = row["speaker_id"]
                seconds = float(row.get("total_s") or row.get("speech_s") or 0)
                if spk not in held_out and (root / spk).is_dir():
                    found[spk] = {**row, "dir": root / spk, "seconds": seconds}
    return found


def draw(pool: dict[str, dict], n: int, balanced: bool, rng: np.random.Generator) -> list[str]:
    """n speakers of `pool`, half F and half M when balanced."""
    if not balanced:
        names = sorted(pool)
        return sorted(str(s) for s in rng.choice(names, size=min(n, len(names)), replace=False))
    out = []
    for sex, k in (("F", n // 2), ("M", n - n // 2)):
        names = sorted(s for s, r in pool.items() if r.get("sex") == sex)
        out += [str(s) for s in rng.choice(names, size=k, replace=False)]
    return sorted(out)


def voice_clip(info: dict, seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, Path]:
    """(samples, first file): `seconds` of the speaker from a random file on, the files after
    it joined when it is shorter (all of them when the speaker has less), peak-normalised to 0.9."""
    files = find_media_files([info["dir"]])
    first = int(rng.integers(len(files)))
    parts, n = [], 0
    for f in files[first:] + files[:first]:
        if n >= seconds * RATE_HZ:
            break
        parts.append(load_audio(f, RATE_HZ))
        n += len(parts[-1])
    x = np.concatenate(parts)[:int(seconds * RATE_HZ)]
    return (0.9 * x / max(np.abs(x).max(), 1e-6)).astype(np.float32), files[first]


def write(path: Path, x: np.ndarray) -> None:
    path.write_bytes(encode_opus([x], RATE_HZ, BIT_RATE, 10, container_format="ogg"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpora", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=Path("models/base/negatives"))
    ap.add_argument("--seed", type=int, default=35)
    ap.add_argument("--voice-s", type=float, default=8.0, help="seconds of each voice")
    ap.add_argument("--music", type=int, default=4, help="synthetic music clips (10 s each)")
    ap.add_argument("--babble", type=int, default=2, help="babble clips (8 s each)")
    ap.add_argument("--babble-voices", type=int, default=6, help="voices summed in each babble clip")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    held_out = set(read_held_out())
    pool = speakers(args.corpora, held_out)
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"{args.out} is not empty: remove it first")
    args.out.mkdir(parents=True, exist_ok=True)

    rows = []
    chosen = []
    for prefix, (n, balanced) in VOICES.items():
        chosen += draw({s: r for s, r in pool.items() if s.startswith(prefix + "_") and r["seconds"] >= args.voice_s},
                       n, balanced, rng)
    assert not set(chosen) & held_out
    for spk in chosen:
        x, source = voice_clip(pool[spk], args.voice_s, rng)
        write(args.out / f"{spk}.opus", x)
        rows.append({"file": f"{spk}.opus", "kind": "voice", "speaker": spk, "corpus": pool[spk]["corpus"],
                     "sex": pool[spk].get("sex") or "?", "source": f"{Path(source).parent.name}/{Path(source).name}",
                     "seconds": round(len(x) / RATE_HZ, 2)})
    for i in range(args.music):
        x = 0.1 * synthetic_music(10 * RATE_HZ, RATE_HZ, rng)
        write(args.out / f"music_{i}.opus", np.clip(x, -1, 1))
        rows.append({"file": f"music_{i}.opus", "kind": "music (generated)", "seconds": 10.0})
    for name, exponent in (("white", 0.0), ("pink", 1.0), ("brown", 2.0)):
        x = 0.1 * coloured_noise(8 * RATE_HZ, exponent, rng)
        write(args.out / f"noise_{name}.opus", np.clip(x, -1, 1))
        rows.append({"file": f"noise_{name}.opus", "kind": f"{name} noise (generated)", "seconds": 8.0})
    others = sorted(s for s in pool if s not in chosen and s.startswith(("lstc_", "so762_")))
    for i in range(args.babble):
        voices = [str(s) for s in rng.choice(others, size=args.babble_voices, replace=False)]
        others = [s for s in others if s not in voices]
        x = sum(np.resize(voice_clip(pool[s], 8.0, rng)[0], 8 * RATE_HZ) for s in voices)
        write(args.out / f"babble_{i}.opus", (0.9 * x / np.abs(x).max()).astype(np.float32))
        rows.append({"file": f"babble_{i}.opus", "kind": "babble", "speaker": " ".join(voices),
                     "corpus": "mixed", "seconds": 8.0})
    fields = ["file", "kind", "speaker", "corpus", "sex", "source", "seconds"]
    with open(args.out / "sources.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fields)
        w.writeheader()
        w.writerows(rows)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    voices = [r for r in rows if r["kind"] == "voice"]
    print(f"{len(rows)} files, {size / 1e6:.2f} MB in {args.out}: {len(voices)} voices "
          f"({sum(r['sex'] == 'F' for r in voices)} F, {sum(r['sex'] == 'M' for r in voices)} M, "
          f"{sum(r['sex'] == '?' for r in voices)} not given), {args.music} music, 3 noise, {args.babble} babble")


if __name__ == "__main__":
    main()
