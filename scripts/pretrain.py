#!/usr/bin/env python3
"""Rebuild the shipped base encoder (models/base) from corpora of many speakers.

    python scripts/pretrain.py CORPUS_DIR [CORPUS_DIR ...] --out models/base [--steps N] [--seed 0]
        [--teacher resemblyzer] [--init DIR] [--channels N] [--bfloat16] [--codec-probability P]
        [--formant-factors F ...] [--class-weight W] [--freq-masks N]

The shipped base (six runs of 3000 steps on 2 CPU threads, 25-43 minutes each; figures in
models/README.md):

    python scripts/pretrain.py ../shared/data/pretrain ../shared/data/pretrain-more \
        --out base-3000 --steps 3000 --seed 0
    python scripts/pretrain.py ../shared/data/pretrain ../shared/data/pretrain-more \
        --out base-6000 --init base-3000 --steps 3000 --learning-rate 1e-3 --seed 1
    python scripts/pretrain.py ../shared/data/pretrain ../shared/data/pretrain-more \
        --out base-9000 --init base-6000 --steps 3000 --learning-rate 5e-4 --seed 2
    python scripts/pretrain.py ../shared/data/pretrain ../shared/data/pretrain-more \
        --out base-12000 --init base-9000 --steps 3000 --learning-rate 5e-4 --seed 5 --class-weight 1
    python scripts/pretrain.py ../shared/data/pretrain ../shared/data/pretrain-more \
        --out base-15000 --init base-12000 --steps 3000 --learning-rate 5e-4 --seed 6 --class-weight 1
    python scripts/pretrain.py ../shared/data/pretrain ../shared/data/pretrain-more \
        --out models/base --init base-15000 --steps 3000 --learning-rate 5e-4 --seed 7 --class-weight 1 \
        --freq-masks 1

--init goes on training an encoder: each run's cosine starts again from the learning rate it is
given. --bfloat16 runs the forward pass in bfloat16 where the CPU has it natively
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
embeds a fixed grid of clean 2 s crops of every training speaker once (kept in
`--teacher-cache`); the real voices' windows are drawn from that grid, and the student's
embedding of each degraded window, through a learnt linear map, is pulled towards the
teacher's embedding of the clean crop (1 - cosine, weight `--teacher-weight`): the teacher's
knowledge of many voices and channels, window by window. With `--chain-group G`, each window
slot's recording chain (codec, film degradation, equaliser) is shared by G voices of the batch:
a window's hardest negatives sound recorded as it was, its positives do not. With `--class-weight W`,
an additive-margin softmax over every training voice (margin 0.2, scale 30) joins the triplet
loss: each step then pulls a window towards its voice's weight vector and away from all 2,020
voices' weights, not only from the 32 voices of its batch. With `--freq-masks N`, N bands of
mel bins of most training windows are flattened to each frame's mean (frequency masking, as in
SpecAugment). The learning rate follows a
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

from speakertag.audio import find_media_files, load_audio
from speakertag.augment import change_speed, codec_round_trip, film_like, generated_backgrounds, random_crop
from speakertag.features import log_mel
from speakertag.losses import batch_all_triplet_loss
from speakertag.model import IMPOSTORS_DIR, cpu_has_bf16, embed, load_model, new_model, save_model
from speakertag.params import AudioParams, Params

sys.path.insert(0, str(Path(__file__).parent))
from eval_speakers import eer, ge2e_embedder, read_held_out  # noqa: E402

SPEED_FACTORS = (0.85, 0.9, 1.1, 1.15)
FREQ_MASK_BINS = 12  # --freq-masks: each band at most this many of the 128 mel bins
FREQ_MASK_PROBABILITY = 0.6  # ... on this share of the windows


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


def freq_masked(feats: torch.Tensor, n_masks: int, rng: np.random.Generator,
                max_bins: int = FREQ_MASK_BINS, probability: float = FREQ_MASK_PROBABILITY) -> torch.Tensor:
    """(n, n_mels, frames) log-mel -> a copy where, in a `probability` share of the windows,
    n_masks bands of 1..max_bins mel bins hold each frame's mean over the bins: the voice must
    be told apart without those bands, as through a chain that loses or colours them."""
    out = feats.clone()
    mean = feats.mean(dim=1)  # (n, frames)
    for i in np.flatnonzero(rng.random(len(feats)) < probability):
        for _ in range(n_masks):
            width = int(rng.integers(1, max_bins + 1))
            low = int(rng.integers(0, feats.shape[1] - width + 1))
            out[i, low:low + width] = mean[i]
    return out


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
    """Endless (log-mel (P*K, n_mels, frames), voice labels (P*K,), teacher crop index or -1).

    crops: {speaker index: rows of (clip index, start sample)} of the teacher's crops, whose
    global row numbers run through the speakers in order: a real voice's windows are drawn there."""

    def __init__(self, corpus, names, p: Params, n_voices: int, per_voice: int, seed: int,
                 codec_probability: float = 0.0, formant_factors: tuple[float, ...] = (), chain_group: int = 1,
                 crops: dict[int, np.ndarray] | None = None, freq_masks: int = 0):
        self.corpus, self.names, self.p, self.codec_probability = corpus, names, p, codec_probability
        self.freq_masks = freq_masks
        self.chain_group, self.crops = chain_group, crops or {}
        first = np.cumsum([0] + [len(self.crops.get(i, ())) for i in range(len(names))])
        self.first_crop = first[:-1]
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
        group, k_max = self.chain_group, self.per_voice
        while True:
            picks = rng.choice(len(self.voices), size=self.n_voices, replace=False)
            n_groups = -(-len(picks) // group)
            # One recording chain (codec, film degradation, equaliser) per (group of voices, window slot):
            # with group > 1 a window's negatives of its group share its chain, its positives do not.
            chain_seeds = rng.integers(2 ** 63, size=(n_groups, k_max))
            windows, labels, taught, alphas, chains = [], [], [], [], []
            for g in range(n_groups):
                members = picks[g * group:(g + 1) * group]
                own = {self.voices[v][0] for v in members}
                others = [c[int(rng.integers(len(c)))] for j in rng.choice(len(self.names), size=8)
                          if j not in own for c in [self.corpus[self.names[j]]]]
                for v in members:
                    spk, factor, alpha = self.voices[v]
                    clips = self.corpus[self.names[spk]]
                    grid = self.crops.get(spk) if factor == alpha == 1.0 else None
                    for k in range(k_max):
                        if grid is not None:  # a crop the teacher embedded
                            row = int(rng.integers(len(grid)))
                            c, start = grid[row]
                            w = clips[c][start:start + a.window_samples]
                            taught.append(int(self.first_crop[spk]) + row)
                        else:
                            w = speed_crop(clips[int(rng.integers(len(clips)))], a.window_samples, factor, rng)
                            taught.append(-1)
                        chain = np.random.default_rng(chain_seeds[g, k]) if group > 1 else rng
                        if chain.random() < self.codec_probability:  # the voice recorded through a phone or a codec
                            w = codec_round_trip(w, a.sample_rate_hz, chain)
                        if chain.random() < p.train.augment_probability:
                            w = film_like(w, others, generated, a.sample_rate_hz, chain, p.train.snr_db_range)
                        windows.append(w)
                        labels.append(v)
                        alphas.append(alpha)
                        chains.append(g * k_max + k)
            feats = log_mel(torch.from_numpy(np.stack(windows)), a)
            for i, alpha in enumerate(alphas):
                if alpha != 1.0:
                    feats[i] = self.warps[alpha] @ feats[i]
            eqs = eq_curves(n_groups * k_max, a.n_mels, rng) * (rng.random((n_groups * k_max, 1, 1)) < 0.7)
            feats = feats + torch.from_numpy(eqs[chains])
            if self.freq_masks:
                feats = freq_masked(feats, self.freq_masks, rng)
            yield feats, torch.tensor(labels), torch.tensor(taught)


def teacher_crops(corpus, names, rate_hz: int, width: int, per_speaker: int, cache: Path | None
                  ) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """({speaker index: (n, 2) rows of (clip index, start sample)}, (total n, 256) unit GE2E
    embeddings of those clean crops at 16 kHz): up to `per_speaker` non-overlapping crops of
    `width` samples per speaker, taken evenly over its clips. Cached in `cache` (npz)."""
    crops = {}
    for i, n in enumerate(names):
        rows = [(c, s) for c, clip in enumerate(corpus[n]) for s in range(0, len(clip) - width + 1, width)]
        if rows:
            pick = np.linspace(0, len(rows) - 1, min(per_speaker, len(rows))).round().astype(int)
            crops[i] = np.array([rows[j] for j in pick], dtype=np.int64)
    if cache and cache.exists():
        z = np.load(cache, allow_pickle=False)
        if list(z["names"]) == list(names) and int(z["width"]) == width and int(z["per_speaker"]) == per_speaker:
            return crops, z["embeddings"]
    run = ge2e_embedder()
    out = []
    for i, n in enumerate(names):
        if i in crops:
            out.append(run(np.stack([corpus[n][c][start:start + width] for c, start in crops[i]]), rate_hz))
        if i % 50 == 0:
            print(f"teacher: {i}/{len(names)} speakers", file=sys.stderr, flush=True)
    embeddings = np.concatenate(out).astype(np.float32)
    if cache:
        np.savez(cache, names=np.array(names), width=width, per_speaker=per_speaker, embeddings=embeddings)
    return crops, embeddings


def distillation_loss(emb: torch.Tensor, taught: torch.Tensor, teacher: torch.Tensor, proj: torch.nn.Linear
                      ) -> torch.Tensor:
    """Mean of 1 - cos(proj(student embedding), teacher embedding of the clean crop) over the
    windows the teacher embedded (taught >= 0); 0 without any."""
    keep = taught >= 0
    if not bool(keep.any()):
        return emb.new_zeros(())
    return torch.mean(1 - torch.nn.functional.cosine_similarity(proj(emb[keep]), teacher[taught[keep]], dim=-1))


class VoiceClasses(torch.nn.Module):
    """Additive-margin softmax over every training voice (CosFace): scale * (cos - margin) for a
    window's own voice, scale * cos for the others. A voice's weight starts at its windows' mean
    embedding in the first batch that holds it, so that a pretrained encoder is not pulled
    towards random directions at the start."""

    def __init__(self, n_voices: int, dim: int, margin: float = 0.2, scale: float = 30.0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(n_voices, dim))
        self.register_buffer("seen", torch.zeros(n_voices, dtype=torch.bool))
        self.margin, self.scale = margin, scale

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        new = labels[~self.seen[labels]].unique()
        with torch.no_grad():
            for v in new.tolist():
                self.weight[v] = emb[labels == v].detach().mean(0)
            self.seen[new] = True
        cos = emb @ torch.nn.functional.normalize(self.weight, dim=1).T
        logits = self.scale * (cos - self.margin * torch.nn.functional.one_hot(labels, cos.shape[1]))
        return torch.nn.functional.cross_entropy(logits, labels)


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
    ap.add_argument("--teacher-weight", type=float, default=0.5)
    ap.add_argument("--teacher-crops", type=int, default=40, help="crops per speaker the teacher embeds")
    ap.add_argument("--teacher-cache", type=Path, help="file keeping the teacher's embeddings between runs")
    ap.add_argument("--class-weight", type=float, default=0.0, help="weight of an additive-margin softmax over "
                    "every training voice beside the triplet loss (0: none)")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (OUT.checkpoint.pt); "
                    "the same command run again goes on from the last one")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels", type=int, help="conv1d channels of a new encoder (EncoderParams.channels; "
                    "default: the shipped architecture's)")
    ap.add_argument("--bfloat16", action="store_true", help="run the forward pass in bfloat16 (autocast) where the "
                    "CPU multiplies it natively: about twice as fast; the weights stay float32")
    ap.add_argument("--codec-probability", type=float, default=0.0, help="share of windows whose voice first goes "
                    "through a codec (augment.CODEC_CHANNELS: telephone codecs at 8 kHz, MP3, AAC, Opus, AC-3)")
    ap.add_argument("--formant-factors", type=float, nargs="*", default=[], help="each training speaker also joins "
                    "with its spectral envelope stretched by each factor, pitch and tempo kept (e.g. 0.88 1.12)")
    ap.add_argument("--chain-group", type=int, default=1, help="voices of a batch that share each window slot's "
                    "recording chain (codec, degradation, equaliser): a window's same-chain negatives (issue 32); "
                    "1: every window its own chain")
    ap.add_argument("--freq-masks", type=int, default=0, help="bands of mel bins masked in a training window "
                    f"(each up to {FREQ_MASK_BINS} bins, in {FREQ_MASK_PROBABILITY:.0%} of the windows)")
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

    teacher, crops, proj = None, None, None
    if args.teacher == "resemblyzer":
        crops, emb = teacher_crops(corpus, names, rate, p.audio.window_samples, args.teacher_crops, args.teacher_cache)
        teacher = torch.from_numpy(emb)
        proj = torch.nn.Linear(p.encoder.embedding_dim, teacher.shape[1])
    model = new_model(p, {"name": "base", "pretraining": {
        "corpora": sorted({r["corpus"] for r in info.values()}), "speakers": len(names),
        "voices": n_voices, "speed_factors": list(SPEED_FACTORS),
        "formant_factors": args.formant_factors,
        "seconds": round(sum(len(c) for v in corpus.values() for c in v) / rate, 1),
        "script": "scripts/pretrain.py", "seed": args.seed, "steps": args.steps, "teacher": args.teacher,
        "bfloat16": fast, "codec_probability": args.codec_probability,
        "chain_group": args.chain_group, "class_weight": args.class_weight, "freq_masks": args.freq_masks,
        "teacher_weight": args.teacher_weight if teacher is not None else 0.0,
        "held_out_speakers": sorted(held_corpus),
        **({"init": start.meta.get("pretraining", {})} if start is not None else {})}})
    enc = model.encoder
    if start is not None:
        enc.load_state_dict(start.encoder.state_dict())
    classes = VoiceClasses(n_voices, p.encoder.embedding_dim) if args.class_weight else None
    trained = list(enc.parameters()) + (list(proj.parameters()) if proj is not None else [])
    groups = [{"params": trained}]
    if classes is not None:
        groups.append({"params": list(classes.parameters()), "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=1e-4)
    # A run stopped (a session's end, a machine given back) goes on from its last checkpoint.
    checkpoint = args.out.with_name(args.out.name + ".checkpoint.pt")
    done = 0
    if checkpoint.exists():
        ckpt = torch.load(checkpoint, weights_only=True)
        enc.load_state_dict(ckpt["encoder"])
        if proj is not None:
            proj.load_state_dict(ckpt["proj"])
        if classes is not None:
            classes.load_state_dict(ckpt["classes"])
        opt.load_state_dict(ckpt["optimizer"])
        done = int(ckpt["step"])
        print(f"resuming from {checkpoint} at step {done}", file=sys.stderr, flush=True)
    loader = torch.utils.data.DataLoader(
        Batches(corpus, names, p, args.voices_per_batch, args.windows_per_voice, args.seed + done,
                args.codec_probability, tuple(args.formant_factors), args.chain_group, crops, args.freq_masks),
        batch_size=None, num_workers=1, prefetch_factor=4, persistent_workers=True)
    t0 = time.monotonic()
    for step, (feats, labels, taught) in enumerate(loader, start=done + 1):
        for g in opt.param_groups:
            g["lr"] = args.learning_rate * max(0.5 * (1 + math.cos(math.pi * step / args.steps)), 0.01)
        enc.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            emb = enc(feats).float()
        triplet = batch_all_triplet_loss(emb, labels, p.train.margin)
        distil = distillation_loss(emb, taught, teacher, proj) if teacher is not None else emb.new_zeros(())
        voice = classes(emb, labels) if classes is not None else emb.new_zeros(())
        loss = triplet + args.teacher_weight * distil + args.class_weight * voice
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            print(f"step {step} {time.monotonic() - t0:.0f}s triplet {float(triplet.detach()):.4f} distil {float(distil.detach()):.3f} "
                  f"classes {float(voice.detach()):.3f} "
                  f"held-out film-like EER {100 * held_out_eer(model, held_windows, held_labels):.1f}%",
                  file=sys.stderr, flush=True)
        if step % args.checkpoint_every == 0 and step < args.steps:
            state = {"step": step, "encoder": enc.state_dict(), "optimizer": opt.state_dict(),
                     "proj": proj.state_dict() if proj is not None else {},
                     "classes": classes.state_dict() if classes is not None else {}}
            torch.save(state, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
        if step >= args.steps:
            break
    model.meta["pretraining"]["minutes"] = round((time.monotonic() - t0) / 60, 1)
    save_model(model, args.out)
    checkpoint.unlink(missing_ok=True)
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
