#!/usr/bin/env python3
"""How well encoders tell voices they never heard apart: EER, each encoder on the same trials.

    python scripts/eval_speakers.py [CORPUS_DIR ...] [--dev DEV_DIR] [--speakers held-out|all]
        [--model models/base] [--model resemblyzer] [--model OTHER_DIR] [--draws 3]

CORPUS_DIR: folders of one sub-folder per speaker (with a speakers.csv giving corpus and
sex), such as the project's pretraining corpora. With `--speakers held-out` (the default) only
the speakers named in scripts/held_out_speakers.txt are used: voices that scripts/pretrain.py
never trains on, but recorded like its training speakers. `--speakers all` takes every speaker
with at least `--min-files` files: a corpus left out of pretraining (Speech Commands) or one
kept for evaluation alone (../shared/data/eval-voices). `--dev DEV_DIR` takes the voices of the
development films instead: each task's train/positive clips and train/negative/speech__<voice>__*
clips, a voice's utterances pooled over the tasks (sex from DEV_DIR/INDEX.json). Those voices
reproduce the gap that independent films show between our encoder and GE2E; the in-corpus
held-out speakers hide it (docs/experiments.md). Decide encoder levers on the dev voices and
a left-out corpus first.

For each speaker, `--windows` windows of the model's length (2 s) are cut from different
files where the speaker has several, else from non-overlapping stretches of one recording.
Every window is embedded clean and once more degraded as films degrade speech (other
held-out voices, babble, coloured noise, synthetic music at 5-15 dB SNR; reverberation,
band limits, levels), and once more through a telephone codec at 8 kHz (mu-law, A-law or
AMR-NB). Trials are all window pairs scored by cosine: "clean" compares clean windows, "film" a
clean window (the enrolment) with a degraded one (the film), "phone" two telephone windows
(voices recorded alike, where bandwidth tells no voice from another). Same-speaker trials pair
two different windows.

Printed per condition: EER over all trials, over different-speaker trials of the same sex
only, of the same corpus only, and of both (where the films' false alarms come from); then
the false-alarm and miss rates at a calibrated threshold: the threshold of equal error on
half of the speakers, applied to the same-sex trials of the other half (two folds, averaged).
`--model resemblyzer` measures Resemblyzer's GE2E encoder on the same windows (16 kHz).
Every `--model` is measured on the same windows; `--draws N` repeats the whole measurement on
N draws of windows and degradations (a few voices make few trials: read the spread) and prints
each figure as the mean with its range.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.signal import resample_poly

from speakertag.audio import find_media_files, load_audio
from speakertag.augment import TELEPHONE_CHANNELS, codec_round_trip, film_like, generated_backgrounds
from speakertag.features import log_mel
from speakertag.model import embed, load_model
from speakertag.params import AudioParams

HELD_OUT = Path(__file__).with_name("held_out_speakers.txt")


def read_held_out(path: Path = HELD_OUT) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def speaker_info(roots: list[Path]) -> dict[str, dict]:
    """{speaker_id: {"corpus", "sex", "dir"}} from each root's speakers.csv."""
    info = {}
    for root in roots:
        with open(root / "speakers.csv") as fh:
            for row in csv.DictReader(fh):
                info[row["speaker_id"]] = {"corpus": row["corpus"], "sex": row.get("sex", "?") or "?",
                                           "dir": root / row["speaker_id"]}
    return info


def speaker_windows(files: list[Path], n: int, width: int, rate_hz: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n windows of `width` samples, drawn from the files in turn, never overlapping."""
    clips = [load_audio(f, rate_hz) for f in files]
    clips = [c for c in clips if len(c) >= width] or [np.tile(clips[0], -(-width // len(clips[0])))]
    slots = [list(rng.permutation(len(c) // width)) for c in clips]  # non-overlapping slots per clip
    out, i = [], 0
    while len(out) < n and any(slots):
        c = i % len(clips)
        if slots[c]:
            s = slots[c].pop()
            out.append(clips[c][s * width:(s + 1) * width])
        i += 1
    return out


def eer(same: np.ndarray, diff: np.ndarray) -> tuple[float, float]:
    """(equal error rate, its threshold) for same-speaker and different-speaker scores."""
    thr = np.sort(np.concatenate([same, diff]))
    miss = np.searchsorted(np.sort(same), thr, side="left") / len(same)  # same scored below thr
    fa = 1 - np.searchsorted(np.sort(diff), thr, side="left") / len(diff)  # diff at or above thr
    i = int(np.argmin(np.abs(miss - fa)))
    return float((miss[i] + fa[i]) / 2), float(thr[i])


def ge2e_embedder(batch_partials: int = 512):
    """Resemblyzer's GE2E encoder as a function (windows (n, samples) at rate_hz, rate_hz) ->
    (n, 256) unit embeddings, each window embedded as `VoiceEncoder.embed_utterance` does (the
    mean of its 1.6 s partials' embeddings), all windows' partials in batches."""
    from resemblyzer import VoiceEncoder, audio  # the teacher: only this script and pretraining use it
    enc = VoiceEncoder("cpu", verbose=False)

    def run(windows: np.ndarray, rate_hz: int) -> np.ndarray:
        w16 = resample_poly(windows, 16000, rate_hz, axis=1).astype(np.float32)
        wav_slices, mel_slices = enc.compute_partial_slices(w16.shape[1], 1.3, 0.75)
        w16 = np.pad(w16, ((0, 0), (0, max(0, wav_slices[-1].stop - w16.shape[1]))))
        partials = np.stack([np.stack([mel[s] for s in mel_slices])
                             for mel in map(audio.wav_to_mel_spectrogram, w16)])  # (n, k, frames, mels)
        flat = torch.from_numpy(partials.reshape(-1, *partials.shape[2:]))
        with torch.no_grad():
            emb = torch.cat([enc(flat[i:i + batch_partials]) for i in range(0, len(flat), batch_partials)]).numpy()
        mean = emb.reshape(len(w16), len(mel_slices), -1).mean(axis=1)
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)
    return run


def embedder(name: str):
    """A function (windows (n, samples) at rate_hz, rate_hz) -> (n, dim) unit embeddings."""
    if name == "resemblyzer":
        return ge2e_embedder()
    model = load_model(name, "cpu")
    a = model.params.audio

    def run(windows: np.ndarray, rate_hz: int) -> np.ndarray:
        return torch.cat([embed(model, log_mel(torch.from_numpy(windows[i:i + 128]), a))
                          for i in range(0, len(windows), 128)]).numpy()
    return run


def dev_voices(root: Path) -> dict[str, dict]:
    """{voice: {"corpus", "sex", "files"}} of the dev films' named voices (module docstring): one
    file per utterance, the same utterance in several tasks counted once."""
    index = json.loads((root / "INDEX.json").read_text())["speakers"]
    files: dict[str, dict[str, Path]] = {}
    for task in sorted(d for d in root.iterdir() if (d / "train").is_dir()):
        for f in sorted((task / "train" / "positive").glob("*")) + sorted((task / "train" / "negative").glob("speech__*")):
            m = re.match(r"(?:speech__)?(.+?)__(.+)\.\w+$", f.name)
            if m and m.group(1) in index:
                files.setdefault(m.group(1), {}).setdefault(m.group(2), f)
    return {v: {"corpus": index[v]["corpus"], "sex": index[v]["sex"][:1], "files": sorted(fs.values())}
            for v, fs in sorted(files.items())}


def corpus_voices(roots: list[Path], which: str, min_files: int) -> dict[str, dict]:
    """{voice: {"corpus", "sex", "files"}}: the held-out speakers of `roots`, or all with >= min_files files."""
    info = speaker_info(roots)
    names = [s for s in read_held_out() if s in info] if which == "held-out" else sorted(info)
    out = {}
    for s in names:
        fs = find_media_files([info[s]["dir"]])
        if which == "held-out" or len(fs) >= min_files:
            out[s] = {"corpus": info[s]["corpus"], "sex": info[s]["sex"], "files": fs}
    return out


CONDITIONS = ("clean", "film", "phone")
COLUMNS = ("EER", "same sex", "same corpus", "both", "FA@thr", "miss@thr")


def measure(voices: dict[str, dict], runs: dict, n_windows: int, seed: int) -> tuple[dict, str]:
    """({model: {condition: [6 rates]}}, a line on the trials) for one draw of windows."""
    width = AudioParams().window_samples  # the same windows for every encoder: speakertag's 2.0 s at 22050 Hz
    rng = np.random.default_rng(seed)
    names = sorted(voices)
    windows, spk = [], []
    for i, s in enumerate(names):
        ws = speaker_windows(voices[s]["files"], n_windows, width, 22050, rng)
        windows += ws
        spk += [i] * len(ws)
    clean = np.stack(windows)
    spk = np.array(spk)
    generated = generated_backgrounds(22050, rng, seconds=30.0)
    degraded = np.stack([film_like(w, [windows[j] for j in rng.choice(np.flatnonzero(spk != spk[i]), 8)],
                                   generated, 22050, rng, (5.0, 15.0)) for i, w in enumerate(windows)])
    phone = np.stack([codec_round_trip(w, 22050, rng, TELEPHONE_CHANNELS) for w in windows])

    corpus = np.array([voices[names[i]]["corpus"] for i in spk])
    sex = np.array([voices[names[i]]["sex"] for i in spk])
    n = len(spk)
    iu = np.triu_indices(n, 1)
    same = spk[iu[0]] == spk[iu[1]]
    same_sex = (sex[iu[0]] == sex[iu[1]]) & (sex[iu[0]] != "?")
    if not same_sex.any():  # the corpus does not say: all pairs stand in
        same_sex = np.ones_like(same)
    same_corpus = corpus[iu[0]] == corpus[iu[1]]
    fold = (spk % 2)[iu[0]], (spk % 2)[iu[1]]
    about = (f"{len(names)} voices, {n} windows, {int(same.sum())} same-voice and {int((~same).sum())} "
             f"different-voice trials ({int((~same & same_sex).sum())} same sex)")
    out = {}
    for model, run in runs.items():
        e = {"clean": run(clean, 22050), "film": run(degraded, 22050), "phone": run(phone, 22050)}
        out[model] = {}
        for name, a_emb, b_emb in (("clean", e["clean"], e["clean"]), ("film", e["clean"], e["film"]),
                                   ("phone", e["phone"], e["phone"])):
            # Film trials score both orders (either window may be the enrolment): symmetrise.
            sim = a_emb @ b_emb.T
            s = ((sim + sim.T) / 2)[iu]
            row = [eer(s[same], s[~same & m])[0] if (~same & m).any() else float("nan")
                   for m in (np.ones_like(same), same_sex, same_corpus, same_sex & same_corpus)]
            fa, miss = [], []
            for f in (0, 1):
                in_f = (fold[0] == f) & (fold[1] == f)
                thr = eer(s[same & in_f], s[~same & in_f])[1]
                other = (fold[0] == 1 - f) & (fold[1] == 1 - f)
                fa.append(float(np.mean(s[~same & same_sex & other] >= thr)))
                miss.append(float(np.mean(s[same & other] < thr)))
            out[model][name] = row + [float(np.mean(fa)), float(np.mean(miss))]
    return out, about


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpora", type=Path, nargs="*")
    ap.add_argument("--dev", type=Path, help="a development set's folder: its films' named voices")
    ap.add_argument("--speakers", choices=["held-out", "all"], default="held-out")
    ap.add_argument("--min-files", type=int, default=3, help="with --speakers all: voices with fewer files are left out")
    ap.add_argument("--model", action="append", help="a model folder, or 'resemblyzer' (repeatable; default models/base)")
    ap.add_argument("--windows", type=int, default=8, help="windows per speaker")
    ap.add_argument("--draws", type=int, default=1, help="draws of windows, seeds --seed, --seed + 1, ...")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if bool(args.dev) == bool(args.corpora):
        sys.exit("give corpus folders or --dev DEV_DIR (one of them)")
    voices = dev_voices(args.dev) if args.dev else corpus_voices(args.corpora, args.speakers, args.min_files)
    if len(voices) < 2:
        sys.exit("fewer than 2 voices found")
    models = args.model or ["models/base"]
    runs = {m: embedder(m) for m in models}
    draws = []
    for d in range(args.draws):
        result, about = measure(voices, runs, args.windows, args.seed + d)
        draws.append(result)
        print(f"draw {d} (seed {args.seed + d}): {about}", flush=True)
    width = max(len(m) for m in models) + 2
    for cond in CONDITIONS:
        print(f"\n{cond}" + "".join(f"{c:>18}" for c in COLUMNS))
        for m in models:
            v = np.array([r[m][cond] for r in draws]) * 100  # (draws, columns) in %
            cells = [f"{np.mean(v[:, j]):5.1f} ({np.min(v[:, j]):4.1f}-{np.max(v[:, j]):4.1f})" if args.draws > 1
                     else f"{v[0, j]:5.1f}" for j in range(len(COLUMNS))]
            print(f"  {m:<{width}}" + "".join(f"{c:>18}" for c in cells))
        if "resemblyzer" in runs:
            for m in models:
                if m != "resemblyzer":
                    ratio = [np.mean([r[m][cond][j] for r in draws]) / max(np.mean([r["resemblyzer"][cond][j] for r in draws]), 1e-9)
                             for j in range(2)]
                    print(f"  {m} / GE2E: EER {ratio[0]:.1f}x, same sex {ratio[1]:.1f}x")


if __name__ == "__main__":
    main()
