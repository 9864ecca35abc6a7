#!/usr/bin/env python3
"""How well an encoder tells voices it never heard apart: EER over held-out speakers.

    python scripts/eval_speakers.py CORPUS_DIR [CORPUS_DIR ...] [--model models/base | --model resemblyzer]

CORPUS_DIR: folders of one sub-folder per speaker (with a speakers.csv giving corpus and
sex), such as the project's pretraining corpora. Only the speakers named in
scripts/held_out_speakers.txt are used: voices that scripts/pretrain.py never trains on.

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
"""

from __future__ import annotations

import argparse
import csv
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


def embedder(name: str):
    """A function (windows (n, samples) at rate_hz, rate_hz) -> (n, dim) unit embeddings."""
    if name == "resemblyzer":
        from resemblyzer import VoiceEncoder  # the teacher: only this script and pretraining use it
        enc = VoiceEncoder("cpu", verbose=False)

        def run(windows: np.ndarray, rate_hz: int) -> np.ndarray:
            w16 = resample_poly(windows, 16000, rate_hz, axis=1).astype(np.float32)
            return np.stack([enc.embed_utterance(w) for w in w16])
        return run
    model = load_model(name, "cpu")
    a = model.params.audio

    def run(windows: np.ndarray, rate_hz: int) -> np.ndarray:
        return torch.cat([embed(model, log_mel(torch.from_numpy(windows[i:i + 128]), a))
                          for i in range(0, len(windows), 128)]).numpy()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpora", type=Path, nargs="+")
    ap.add_argument("--model", default="models/base", help="a model folder, or 'resemblyzer'")
    ap.add_argument("--windows", type=int, default=8, help="windows per speaker")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    run = embedder(args.model)
    width = AudioParams().window_samples  # the same windows for every encoder: speakertag's 2.0 s at 22050 Hz
    info = speaker_info(args.corpora)
    held = [s for s in read_held_out() if s in info]
    if len(held) < 2:
        sys.exit("fewer than 2 held-out speakers found in the corpora given")
    rng = np.random.default_rng(args.seed)
    windows, spk = [], []
    for i, s in enumerate(held):
        ws = speaker_windows(find_media_files([info[s]["dir"]]), args.windows, width, 22050, rng)
        windows += ws
        spk += [i] * len(ws)
    clean = np.stack(windows)
    spk = np.array(spk)
    generated = generated_backgrounds(22050, rng, seconds=30.0)
    degraded = np.stack([film_like(w, [windows[j] for j in rng.choice(np.flatnonzero(spk != spk[i]), 8)],
                                   generated, 22050, rng, (5.0, 15.0)) for i, w in enumerate(windows)])
    phone = np.stack([codec_round_trip(w, 22050, rng, TELEPHONE_CHANNELS) for w in windows])
    e_clean, e_film, e_phone = run(clean, 22050), run(degraded, 22050), run(phone, 22050)

    corpus = np.array([info[held[i]]["corpus"] for i in spk])
    sex = np.array([info[held[i]]["sex"] for i in spk])
    n = len(spk)
    iu = np.triu_indices(n, 1)
    same = spk[iu[0]] == spk[iu[1]]
    same_sex = (sex[iu[0]] == sex[iu[1]]) & (sex[iu[0]] != "?")
    same_corpus = corpus[iu[0]] == corpus[iu[1]]
    fold = (spk % 2)[iu[0]], (spk % 2)[iu[1]]
    print(f"{args.model}: {len(held)} held-out speakers, {n} windows, {int(same.sum())} same-speaker and "
          f"{int((~same).sum())} different-speaker trials ({int((~same & same_sex).sum())} same sex)")
    print(f"{'condition':<8}{'EER':>8}{'same sex':>10}{'same corpus':>13}{'both':>8}{'FA@thr':>9}{'miss@thr':>10}")
    for name, a_emb, b_emb in (("clean", e_clean, e_clean), ("film", e_clean, e_film), ("phone", e_phone, e_phone)):
        # Film trials score both orders (either window may be the enrolment): symmetrise.
        sim = a_emb @ b_emb.T
        s = ((sim + sim.T) / 2)[iu]
        row = [eer(s[same], s[~same & m])[0] for m in (np.ones_like(same), same_sex, same_corpus, same_sex & same_corpus)]
        fa, miss = [], []
        for f in (0, 1):
            in_f = (fold[0] == f) & (fold[1] == f)
            thr = eer(s[same & in_f], s[~same & in_f])[1]
            other = (fold[0] == 1 - f) & (fold[1] == 1 - f)
            fa.append(float(np.mean(s[~same & same_sex & other] >= thr)))
            miss.append(float(np.mean(s[same & other] < thr)))
        print(f"{name:<8}" + "".join(f"{100 * v:>{w}.1f}%" for v, w in zip(row, (7, 9, 12, 7)))
              + f"{100 * np.mean(fa):>8.1f}%{100 * np.mean(miss):>9.1f}%", flush=True)


if __name__ == "__main__":
    main()
