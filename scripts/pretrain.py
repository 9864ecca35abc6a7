#!/usr/bin/env python3
"""Rebuild the shipped base encoder (models/base) from corpora of many speakers.

    python scripts/pretrain.py CORPUS_DIR [CORPUS_DIR ...] --out models/base [--steps N] [--seed 0]
        [--teacher resemblyzer] [--init DIR] [--channels N] [--bfloat16] [--codec-probability P]
        [--formant-factors F ...]

The shipped base (three runs of 3000 steps on 2 CPU threads, 33-43 minutes each; figures in
models/README.md):

    python scripts/pretrain.py ../shared/data/pretrain ../shared/data/pretrain-more \
        --out base-3000 --steps 3000 --seed 0
    python scripts/pretrain.py ../shared/data/pretrain ../shared/data/pretrain-more \
        --out base-6000 --init base-3000 --steps 3000 --learning-rate 1e-3 --seed 1
    python scripts/pretrain.py ../shared/data/pretrain ../shared/data/pretrain-more \
        --out models/base --init base-6000 --steps 3000 --learning-rate 5e-4 --seed 2

--init goes on training an encoder: each run's cosine starts again, from half the previous
run's learning rate. --bfloat16 runs the forward pass in bfloat16 where the CPU has it natively
(about twice as fast; the shipped base was trained in float32); --channels widens a new encoder;
--codec-probability passes that share of the windows through a codec first (telephone, MP3,
AAC, Opus, AC-3), and --formant-factors adds a formant-shifted copy of every speaker per factor
(measured in docs/experiments.md; neither was used for the shipped base).

Each CORPUS_DIR holds one folder per speaker with that speaker's audio files and a
speakers.csv (speaker_id, corpus, sex, ...). The speakers of scripts/held_out_speakers.txt
are never trained on: their clips ship as OUT/impostors (`speakertag train` calibrates
against these unseen voices) and scripts/eval_speakers.py measures encoders on them.

Pseudo-speakers: every training speaker also joins at 0.85, 0.9, 1.1 and 1.15 times the
speed (pitch, formants and tempo move together, resampled on the fly) as four more voices,
and with --formant-factors as one more voice per factor whose spectral envelope alone is
stretched (pitch and tempo kept).
Each step draws P voices x K windows, degrades every window like film audio (other
speakers' voices, babble, coloured noise, synthetic music, reverberation, band limits,
levels), colours its log-mel with a random smooth equaliser (the encoder has no per-window
mean normalisation, so channel invariance is learnt), and applies the cosine triplet loss
over all valid triplets of the batch (batch-all; batch-hard collapsed to a constant
embedding on these corpora). With `--teacher resemblyzer`, Resemblyzer's GE2E encoder
(trained on thousands of speakers; a dependency of this script only, extra `pretrain`)
gives a centroid of every real training speaker, and the batch's student speaker centroids
are pulled towards the teacher's geometry: the z-scored cosine matrix between the batch's
real speakers matches the teacher's (weight `--teacher-weight`). The learning rate follows a
cosine over --steps; the last weights are kept (no checkpoint is chosen on the held-out
speakers, whose EER is printed every `--eval-every` steps as a diagnostic only).
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import librosa
import numpy as np
import scipy.fft
import torch
from scipy.signal import resample_poly

from speakertag.audio import find_media_files, load_audio
from speakertag.augment import change_speed, codec_round_trip, film_like, generated_backgrounds, random_crop
from speakertag.features import log_mel
from speakertag.losses import batch_all_triplet_loss
from speakertag.model import IMPOSTORS_DIR, cpu_has_bf16, embed, load_model, new_model, save_model
from speakertag.params import AudioParams, Params

sys.path.insert(0, str(Path(__file__).parent))
from eval_speakers import eer, read_held_out  # noqa: E402

SPEED_FACTORS = (0.85, 0.9, 1.1, 1.15)


def load_corpora(roots: list[Path], rate_hz: int, skip: set[str]) -> tuple[dict[str, list[np.ndarray]], dict[str, dict]]:
    """({speaker: [clip, ...]}, {speaker: speakers.csv row}) for every speaker not in `skip`."""
    corpus, info = {}, {}
    for root in roots:
        with open(root / "speakers.csv") as fh:
            rows = {r["speaker_id"]: r for r in csv.DictReader(fh)}
        for spk in sorted(rows):
            if spk in skip or not (root / spk).is_dir():
                continue
            corpus[spk] = [load_audio(f, rate_hz) for f in find_media_files([root / spk])]
            info[spk] = {**rows[spk], "dir": str(root / spk)}
    return corpus, info


def speed_crop(clip: np.ndarray, n_samples: int, factor: float, rng: np.random.Generator) -> np.ndarray:
    """A random crop of `clip` played `factor` times faster, n_samples long: pitch, formants
    and tempo scale together (a pseudo-speaker)."""
    if factor == 1.0:
        return random_crop(clip, n_samples, rng)
    return change_speed(random_crop(clip, int(math.ceil(n_samples * factor)) + 8, rng), factor)[:n_samples]


def eq_curves(n: int, n_mels: int, rng: np.random.Generator, max_db: float = 8.0) -> np.ndarray:
    """(n, n_mels, 1) random smooth equaliser curves in natural-log power units: the sum of
    three cosines over the mel axis, up to about +-max_db (a microphone, a room, a codec)."""
    x = np.linspace(0, np.pi, n_mels)
    amp = rng.uniform(-1, 1, size=(n, 3)) * (max_db / 3) * np.log(10) / 10
    phase = rng.uniform(0, 2 * np.pi, size=(n, 3))
    curve = sum(amp[:, i, None] * np.cos((i + 1) * x[None] + phase[:, i, None]) for i in range(3))
    return curve[:, :, None].astype(np.float32)


def formant_warp_matrix(p: AudioParams, alpha: float, n_envelope: int = 16) -> np.ndarray:
    """(n_mels, n_mels) linear map of log-mel frames that stretches their spectral envelope (the
    first `n_envelope` cepstral coefficients over the mel axis) `alpha` times along frequency and
    keeps the fine structure (the pitch's harmonics): a vocal tract 1/alpha times as long, the
    same pitch and tempo (a pseudo-speaker the speed copies cannot make)."""
    centres_hz = librosa.mel_frequencies(p.n_mels + 2, fmin=p.f_min_hz, fmax=p.f_max_hz)[1:-1]
    centres_mel = librosa.hz_to_mel(centres_hz)
    source_bin = np.interp(librosa.hz_to_mel(centres_hz / alpha), centres_mel, np.arange(p.n_mels))
    lo = np.floor(source_bin).astype(int)
    frac = source_bin - lo
    warp = np.zeros((p.n_mels, p.n_mels))
    rows = np.arange(p.n_mels)
    warp[rows, lo] += 1 - frac
    warp[rows, np.minimum(lo + 1, p.n_mels - 1)] += frac
    dct = scipy.fft.dct(np.eye(p.n_mels), norm="ortho", axis=0)[:n_envelope]
    envelope = dct.T @ dct
    return (np.eye(p.n_mels) - envelope + warp @ envelope).astype(np.float32)


class Batches(torch.utils.data.IterableDataset):
    """Endless (log-mel (P*K, n_mels, frames), voice labels (P*K,), real-speaker index or -1)."""

    def __init__(self, corpus, names, p: Params, n_voices: int, per_voice: int, seed: int,
                 codec_probability: float = 0.0, formant_factors: tuple[float, ...] = ()):
        self.corpus, self.names, self.p, self.codec_probability = corpus, names, p, codec_probability
        # (speaker, speed factor, formant factor): the real voice, its speed copies, its formant copies
        self.voices = [(i, f, 1.0) for i in range(len(names)) for f in (1.0, *SPEED_FACTORS)]
        self.voices += [(i, 1.0, a) for i in range(len(names)) for a in formant_factors]
        self.warps = {a: torch.from_numpy(formant_warp_matrix(p.audio, a)) for a in formant_factors}
        self.n_voices, self.per_voice, self.seed = n_voices, per_voice, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        torch.set_num_threads(1)
        p, a = self.p, self.p.audio
        generated = generated_backgrounds(a.sample_rate_hz, rng, seconds=30.0)
        while True:
            picks = rng.choice(len(self.voices), size=self.n_voices, replace=False)
            windows, labels, real, alphas = [], [], [], []
            for v in picks:
                spk, factor, alpha = self.voices[v]
                clips = self.corpus[self.names[spk]]
                others = [c[int(rng.integers(len(c)))] for j in rng.choice(len(self.names), size=8)
                          if j != spk for c in [self.corpus[self.names[j]]]]
                for _ in range(self.per_voice):
                    w = speed_crop(clips[int(rng.integers(len(clips)))], a.window_samples, factor, rng)
                    if rng.random() < self.codec_probability:  # the voice recorded through a phone or a codec
                        w = codec_round_trip(w, a.sample_rate_hz, rng)
                    if rng.random() < p.train.augment_probability:
                        w = film_like(w, others, generated, a.sample_rate_hz, rng, p.train.snr_db_range)
                    windows.append(w)
                    labels.append(v)
                    real.append(spk if factor == alpha == 1.0 else -1)
                    alphas.append(alpha)
            feats = log_mel(torch.from_numpy(np.stack(windows)), a)
            for i, alpha in enumerate(alphas):
                if alpha != 1.0:
                    feats[i] = self.warps[alpha] @ feats[i]
            feats = feats + torch.from_numpy(eq_curves(len(windows), a.n_mels, rng) * (rng.random((len(windows), 1, 1)) < 0.7))
            yield feats, torch.tensor(labels), torch.tensor(real)


def teacher_centroids(corpus, names, rate_hz: int, cache: Path | None, seed: int) -> np.ndarray:
    """(n_speakers, 256) unit GE2E centroids of 8 clean 2 s windows of each speaker, at 16 kHz."""
    if cache and cache.exists():
        z = np.load(cache, allow_pickle=False)
        if list(z["names"]) == list(names):
            return z["centroids"]
    from resemblyzer import VoiceEncoder
    enc = VoiceEncoder("cpu", verbose=False)
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(names):
        clips = corpus[n]
        wavs = [resample_poly(random_crop(clips[int(rng.integers(len(clips)))], 2 * rate_hz, rng), 16000, rate_hz)
                .astype(np.float32) for _ in range(8)]
        out.append(enc.embed_speaker(wavs))
        if i % 50 == 0:
            print(f"teacher: {i}/{len(names)} speakers", file=sys.stderr, flush=True)
    centroids = np.stack(out).astype(np.float32)
    if cache:
        np.savez(cache, names=np.array(names), centroids=centroids)
    return centroids


def zscore_offdiag(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, standardised to mean 0 and std 1."""
    v = m[~torch.eye(len(m), dtype=torch.bool, device=m.device)]
    return (v - v.mean()) / (v.std() + 1e-6)


def distillation_loss(emb: torch.Tensor, real: torch.Tensor, teacher: torch.Tensor, per_voice: int) -> torch.Tensor:
    """Mean squared difference between the z-scored cosine matrices of the student's and the
    teacher's centroids of the batch's real (not speed-changed) speakers; 0 with fewer than 3."""
    cent = torch.nn.functional.normalize(emb.reshape(-1, per_voice, emb.shape[-1]).mean(1), dim=-1)
    spk = real.reshape(-1, per_voice)[:, 0]
    keep = spk >= 0
    if int(keep.sum()) < 3:
        return emb.new_zeros(())
    s, t = cent[keep], teacher[spk[keep]]
    return torch.mean((zscore_offdiag(s @ s.T) - zscore_offdiag(t @ t.T)) ** 2)


def held_out_eer(model, windows: torch.Tensor, labels: np.ndarray) -> float:
    emb = torch.cat([embed(model, windows[i:i + 64]) for i in range(0, len(windows), 64)]).numpy()
    iu = np.triu_indices(len(labels), 1)
    s, same = (emb @ emb.T)[iu], labels[iu[0]] == labels[iu[1]]
    return eer(s[same], s[~same])[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpora", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=Path("models/base"))
    ap.add_argument("--steps", type=int, default=3000, help="training steps; the learning rate follows a cosine over them")
    ap.add_argument("--voices-per-batch", type=int, default=32)
    ap.add_argument("--windows-per-voice", type=int, default=3)
    ap.add_argument("--learning-rate", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teacher", choices=["none", "resemblyzer"], default="none")
    ap.add_argument("--teacher-weight", type=float, default=0.1)
    ap.add_argument("--teacher-cache", type=Path, help="file keeping the teacher's centroids between runs")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels", type=int, help="conv1d channels of a new encoder (EncoderParams.channels; "
                    "default: the shipped architecture's)")
    ap.add_argument("--bfloat16", action="store_true", help="run the forward pass in bfloat16 (autocast) where the "
                    "CPU multiplies it natively: about twice as fast; the weights stay float32")
    ap.add_argument("--codec-probability", type=float, default=0.0, help="share of windows whose voice first goes "
                    "through a codec (augment.CODEC_CHANNELS: telephone codecs at 8 kHz, MP3, AAC, Opus, AC-3)")
    ap.add_argument("--formant-factors", type=float, nargs="*", default=[], help="each training speaker also joins "
                    "with its spectral envelope stretched by each factor, pitch and tempo kept (e.g. 0.88 1.12)")
    ap.add_argument("--init", type=Path, help="go on training this model folder's encoder (its front end and "
                    "architecture) instead of a new one; its pretraining record is kept under 'init'")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    start = load_model(args.init) if args.init else None
    p = start.params if start is not None else Params()
    if args.channels and start is None:
        p = replace(p, encoder=replace(p.encoder, channels=args.channels))
    elif args.channels and args.channels != p.encoder.channels:
        sys.exit("--channels cannot change the architecture of an --init encoder")
    fast = args.bfloat16 and cpu_has_bf16()
    if args.bfloat16 and not fast:
        print("--bfloat16: this CPU has no native bfloat16; training in float32", file=sys.stderr)
    rate = p.audio.sample_rate_hz
    torch.manual_seed(args.seed)
    held = read_held_out()
    t0 = time.monotonic()
    corpus, info = load_corpora(args.corpora, rate, set(held))
    held_corpus, held_info = load_corpora(args.corpora, rate, set(info))
    names = sorted(corpus)
    n_voices = len(names) * (1 + len(SPEED_FACTORS) + len(args.formant_factors))
    print(f"{len(names)} training speakers ({n_voices} voices with speed and formant copies), "
          f"{len(held_corpus)} held out; loaded in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)

    # A fixed set of degraded held-out windows for the diagnostic EER.
    rng = np.random.default_rng(args.seed + 1)
    generated = generated_backgrounds(rate, rng, seconds=30.0)
    hw, hl = [], []
    for i, (n, clips) in enumerate(sorted(held_corpus.items())):
        for _ in range(4):
            w = random_crop(clips[int(rng.integers(len(clips)))], p.audio.window_samples, rng)
            hw.append(film_like(w, [c for c in corpus[names[int(rng.integers(len(names)))]]], generated, rate, rng, (5.0, 15.0)))
            hl.append(i)
    held_windows, held_labels = log_mel(torch.from_numpy(np.stack(hw)), p.audio), np.array(hl)

    teacher = None
    if args.teacher == "resemblyzer":
        teacher = torch.from_numpy(teacher_centroids(corpus, names, rate, args.teacher_cache, args.seed))
    model = new_model(p, {"name": "base", "pretraining": {
        "corpora": sorted({r["corpus"] for r in info.values()}), "speakers": len(names),
        "voices": n_voices, "speed_factors": list(SPEED_FACTORS),
        "formant_factors": args.formant_factors,
        "seconds": round(sum(len(c) for v in corpus.values() for c in v) / rate, 1),
        "script": "scripts/pretrain.py", "seed": args.seed, "steps": args.steps, "teacher": args.teacher,
        "bfloat16": fast, "codec_probability": args.codec_probability,
        "teacher_weight": args.teacher_weight if teacher is not None else 0.0,
        "held_out_speakers": sorted(held_corpus),
        **({"init": start.meta.get("pretraining", {})} if start is not None else {})}})
    enc = model.encoder
    if start is not None:
        enc.load_state_dict(start.encoder.state_dict())
    opt = torch.optim.AdamW(enc.parameters(), lr=args.learning_rate, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(
        Batches(corpus, names, p, args.voices_per_batch, args.windows_per_voice, args.seed, args.codec_probability,
                tuple(args.formant_factors)),
        batch_size=None, num_workers=1, prefetch_factor=4, persistent_workers=True)
    t0 = time.monotonic()
    for step, (feats, labels, real) in enumerate(loader, start=1):
        for g in opt.param_groups:
            g["lr"] = args.learning_rate * max(0.5 * (1 + math.cos(math.pi * step / args.steps)), 0.01)
        enc.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            emb = enc(feats).float()
        triplet = batch_all_triplet_loss(emb, labels, p.train.margin)
        distil = distillation_loss(emb, real, teacher, args.windows_per_voice) if teacher is not None else emb.new_zeros(())
        loss = triplet + args.teacher_weight * distil
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            print(f"step {step} {time.monotonic() - t0:.0f}s triplet {float(triplet.detach()):.4f} distil {float(distil.detach()):.3f} "
                  f"held-out film-like EER {100 * held_out_eer(model, held_windows, held_labels):.1f}%",
                  file=sys.stderr, flush=True)
        if step >= args.steps:
            break
    model.meta["pretraining"]["minutes"] = round((time.monotonic() - t0) / 60, 1)
    save_model(model, args.out)
    # The held-out speakers ship with the model: `train` calibrates thresholds against these
    # voices, which neither the base encoder nor a user's training has heard. One file each
    # (about 12 s), so that calibrating stays quick.
    impostors = args.out / IMPOSTORS_DIR
    if impostors.exists():
        shutil.rmtree(impostors)
    impostors.mkdir()
    for spk in sorted(held_corpus):
        f = find_media_files([Path(held_info[spk]["dir"])])[0]
        shutil.copyfile(f, impostors / f"{spk}__{f.name}")
    print(f"saved {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
