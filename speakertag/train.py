"""Clips -> a trained encoder, a positive memory and a calibrated threshold.

`train` loads and checks the clips (files, or moments of a recording read by seeking to
them: `load_film_spans`; without negatives, the bank of other sounds shipped with the base
encoder), then `train_on_clips` runs two stages in order:
`fine_tune` (sample film-like triplets, mine hard negatives from the whole negative pool,
evaluate on the clips held back, stop early, average the checkpoints and mix them with the
base) and `build_memory` (embed every clip's windows, calibrate the threshold
leave-one-clip-out on every clip against the negatives and the nearest impostors).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .audio import find_media_files, load_audio, load_span, probe, without_gaps
from .augment import change_speed, film_like, generated_backgrounds, rms
from .errors import SpeakertagError
from .features import log_mel, tile_to
from .io_utils import write_model_folder
from .losses import mine_hard_negatives, triplet_loss
from .memory import Memory, save_memory
from .model import (Model, embed, impostors_of, load_model, negatives_of, new_model, resolve_device, save_model,
                    shipped_base_dir)
from .params import AudioParams, Params, speakertag_version
from .scoring import Calibration, Scorer, calibrate_threshold, calibration_problem, nearest_groups, top_k_mean_excluding
from .spans import END_TOLERANCE_S, FilmSpans, format_span, split_sources, subtract_spans
from .writers import check_voice_name


@dataclass(frozen=True)
class Clip:
    name: str
    samples: np.ndarray  # (n_samples,) float32 mono at the model rate
    film_sound: bool = False  # a moment of a recording (a film span): film-like already


@dataclass(frozen=True)
class StepInfo:
    step: int
    max_steps: int
    loss: float
    val_f1: float | None  # best-threshold F1 on validation windows at the last evaluation


@dataclass(frozen=True)
class TrainReport:
    n_positive_clips: int
    n_negative_clips: int
    positive_s: float
    negative_s: float
    steps: int
    best_step: int
    seconds: float
    calibration: Calibration
    skipped: tuple[str, ...]  # clips not used, with the reason
    n_positive_spans: int = 0  # moments of recordings among the positives (n_positive_clips: the files)
    positive_films: tuple[str, ...] = ()  # the recordings they come from
    shipped_negatives: bool = False  # the negatives are the bank shipped with the base encoder
    film_bed_s: float = 0.0  # of the positives' recordings' own sound, mixed under every window (film_beds)
    n_negative_spans: int = 0  # moments of recordings among the negatives (n_negative_clips counts them too)

    def positives(self) -> str:
        """What the target was learned from, in words: '2 spans of film.mkv', '6 positive clips', or both."""
        films = self.positive_films
        spans = (f"{self.n_positive_spans} span{'s' if self.n_positive_spans != 1 else ''} of "
                 f"{Path(films[0]).name if len(films) == 1 else f'{len(films)} recordings'}") if films else ""
        clips = f"{self.n_positive_clips} positive clip{'s' if self.n_positive_clips != 1 else ''}"
        return f"{spans} and {clips}" if spans and self.n_positive_clips else spans or clips

    def negatives(self) -> str:
        k, n = self.n_negative_spans, self.n_negative_clips - self.n_negative_spans
        moments = f" and {k} moment{'s' if k != 1 else ''} of other voices" if k else ""
        clips = (f"{n} clips of other voices, music and noise shipped with speakertag" if self.shipped_negatives
                 else f"{n} negative clip{'s' if n != 1 else ''}")
        return clips + moments

    def summary(self, base_dir: Path | None) -> str:
        """What train learned from and the threshold it chose, in two lines for people; base_dir:
        the folder of the model fine-tuned (None: trained from scratch)."""
        c = self.calibration
        bed = f", heard over {self.film_bed_s:.0f} s of the film's own sound," if self.film_bed_s else ""
        return (f"trained on {self.positives()} ({self.positive_s:.0f} s) and "
                f"{self.negatives()} ({self.negative_s:.0f} s)"
                f"{bed} in {self.seconds:.1f} s "
                f"({self.steps} steps, validation best at step {self.best_step}; "
                f"{f'fine-tuned from {base_dir}' if base_dir else 'from scratch'})\n"
                f"threshold {c.threshold:.3f} ({c.rule} on {c.n_positive} target + {c.n_negative} other film-like "
                f"windows, leave-one-clip-out, the target speaking {c.target_share:.0%} of the time): "
                f"precision {c.precision:.2f}, recall {c.recall:.2f} on those windows "
                f"(real films, with unseen voices and louder backgrounds, score lower)")


SHIPPED = "shipped"  # train(base=SHIPPED): the base encoder shipped with speakertag


def _unusable(x: np.ndarray, p: Params) -> str:
    """Why the clip samples x cannot be trained on ("" when they can)."""
    if len(x) < p.train.min_clip_s * p.audio.sample_rate_hz:
        return f"shorter than {p.train.min_clip_s:g} s"
    return "" if np.any(np.abs(x) > 1e-4) else "silent"


def load_clips(paths: list[str | Path], role: str, p: Params) -> tuple[list[Clip], list[str]]:
    """Decode every media file under `paths`; returns usable clips and skip messages."""
    files = find_media_files(paths)
    clips, skipped = [], []
    for f in files:
        gaps: list[tuple[float, float]] = []
        x = load_audio(f, p.audio.sample_rate_hz, gaps=gaps)
        # A clip has no film to keep in step with: the silence filled into its gaps is no training material.
        x = without_gaps(x, gaps, p.audio.sample_rate_hz)
        why = _unusable(x, p)
        if why:
            skipped.append(f"{f}: {why}")
        else:
            clips.append(Clip(str(f), x))
    if not clips:
        why = f" ({skipped[0].split(': ', 1)[1]}{' ...' if len(skipped) > 1 else ''})" if skipped else ""
        raise SpeakertagError(f"no usable {role} clips{why}: each needs at least {p.train.min_clip_s:g} s of sound")
    return clips, skipped


def load_film_spans(films: list[FilmSpans], p: Params, stream: int | None = None, channels: str = "auto",
                    role: str = "positive") -> tuple[list[Clip], list[str], list[FilmSpans]]:
    """The moments of recordings as clips, each decoded from a seek to it (a film's other
    hours are never decoded): the usable clips, skip messages, and the spans they come from.
    Raises SpeakertagError for a recording without audio and a span beyond its end."""
    rate = p.audio.sample_rate_hz
    clips, skipped, used = [], [], []
    for f in films:
        duration_s = probe(f.film, stream).duration_s  # a film without audio fails here, in one line
        kept = []
        for s, e in f.spans:
            if duration_s is not None and e > duration_s + END_TOLERANCE_S:
                raise SpeakertagError(f"span {format_span((s, e))} is beyond the end of {f.film} ({duration_s:.1f} s long)")
            gaps: list[tuple[float, float]] = []
            x = load_span(f.film, s, e, rate, stream, channels, gaps)
            if len(x) < round(e * rate) - round(s * rate) - END_TOLERANCE_S * rate:
                raise SpeakertagError(f"span {format_span((s, e))} is beyond the end of {f.film}'s audio "
                                      f"({s + len(x) / rate:.1f} s)")
            x = without_gaps(x, [(a - s, b - s) for a, b in gaps], rate)
            name = f"{f.film}@{s:g}-{e:g}"
            why = _unusable(x, p)
            if why:
                skipped.append(f"{name}: {why}")
            else:
                clips.append(Clip(name, x, film_sound=True))
                kept.append((s, e))
        if kept:
            used.append(FilmSpans(f.film, tuple(kept)))
    if films and not clips:
        raise SpeakertagError(f"no usable {role} spans ({skipped[0].split(': ', 1)[1]}"
                              f"{' ...' if len(skipped) > 1 else ''}): each needs at least {p.train.min_clip_s:g} s of sound")
    return clips, skipped, used


FILM_BED_STRETCH_S = 10.0  # film_beds: the length of each stretch
FILM_BED_GUARD_S = 2.0  # film_beds: how far each stretch keeps from the spans


def film_beds(films: list[FilmSpans], span_clips: list[Clip], model: Model | None, p: Params,
              stream: int | None = None, channels: str = "auto", device: str | None = None) -> list[np.ndarray]:
    """p.train.film_bed_stretches stretches of each recording away from its spans, read by
    seeking: its sound bed (music, noise, other voices), mixed under the negatives as under
    the target, so that the recording's own sound is no cue for the target. Of three times as
    many candidates spread over the recording, those least like the spans by `model` (the
    target speaks elsewhere in it too)."""
    n, rate = p.train.film_bed_stretches, p.audio.sample_rate_hz
    if not n or not films or model is None:
        return []
    dev = resolve_device(device)
    model.encoder.to(dev)
    target = embed_chunks(model, Windows.of(span_clips, p.audio).chunks(), dev)
    beds = []
    for f in films:
        duration_s = probe(f.film, stream).duration_s or 0.0
        free = subtract_spans([(0.0, duration_s)], [(s - FILM_BED_GUARD_S, e + FILM_BED_GUARD_S) for s, e in f.spans])
        starts = [t for s, e in free for t in np.arange(s, e - FILM_BED_STRETCH_S + 1e-6, FILM_BED_STRETCH_S)]
        picked = [starts[i] for i in np.unique(np.linspace(0, len(starts) - 1, 3 * n).round().astype(int))] if starts else []
        stretches = []
        for t in picked:
            gaps: list[tuple[float, float]] = []
            x = load_span(f.film, t, t + FILM_BED_STRETCH_S, rate, stream, channels, gaps)
            x = without_gaps(x, [(a - t, b - t) for a, b in gaps], rate)
            if len(x) >= p.audio.window_samples and rms(x) > 1e-4:
                stretches.append(x)
        if not stretches:
            continue
        w = Windows.of([Clip("", x) for x in stretches], p.audio)
        like = np.sort(embed_chunks(model, w.chunks(), dev) @ target.T, axis=1)[:, -p.tag.top_k:].mean(axis=1)
        most_like = np.full(len(stretches), -np.inf)
        np.maximum.at(most_like, w.clip_index, like)
        beds += [stretches[i] for i in np.argsort(most_like)[:n]]
    model.encoder.cpu()
    return beds


def _check_apart(positive: list[FilmSpans], negative: list[FilmSpans]) -> None:
    """SpeakertagError when a moment of a recording is asked for as the target and as another voice."""
    for f, g in itertools.product(positive, negative):
        same_film = f.film.resolve() == g.film.resolve()
        for (s, e), (a, b) in itertools.product(f.spans, g.spans) if same_film else ():
            if a < e and s < b:
                raise SpeakertagError(f"{f.film}: the positive span {format_span((s, e))} and the negative span "
                                      f"{format_span((a, b))} overlap: a moment cannot be both the target and another voice")


def split_clips(clips: list[Clip], fraction: float, rng: np.random.Generator) -> tuple[list[Clip], list[Clip]]:
    """Hold back whole clips for validation; with fewer than 3 clips, the last part of each."""
    if len(clips) >= 3:
        order = rng.permutation(len(clips))
        n_val = max(1, round(fraction * len(clips)))
        return [clips[i] for i in order[n_val:]], [clips[i] for i in order[:n_val]]
    train, val = [], []
    for c in clips:
        cut = int(len(c.samples) * (1 - fraction))
        train.append(Clip(c.name, c.samples[:cut]))
        val.append(Clip(c.name, c.samples[cut:]))
    return train, val


def window_starts(n_samples: int, a: AudioParams) -> np.ndarray:
    """(n_windows,) int64: the first sample of each window of an n_samples clip at the tagging
    hop; a clip shorter than a window has one (tiled to fill it when cut)."""
    return np.arange(0, max(n_samples, a.window_samples) - a.window_samples + 1, a.hop_frames * a.hop_length,
                     dtype=np.int64)


def memory_entry_clips(clip_samples: Sequence[int], p: Params) -> np.ndarray:
    """(n_entries,) the clip each entry of a memory made of clips of clip_samples samples comes
    from, as `memory_chunks` lays them out: every window of every clip in order, then each
    round of film-like copies (p.train.augmented_memory_copies) in the same order."""
    counts = [len(window_starts(n, p.audio)) for n in clip_samples]
    return np.tile(np.repeat(np.arange(len(counts)), counts), 1 + p.train.augmented_memory_copies)


CHUNK_WINDOWS = 256  # windows cut, degraded and embedded at a time when building memories


@dataclass(frozen=True)
class Windows:
    """The windows of some clips at the tagging hop, cut only when asked for: memories and
    pools of thousands of clips are built a chunk at a time instead of from all windows at
    once (a 2 s window is 176 kB of audio and 88 kB of log-mel). A clip shorter than a
    window is tiled to fill one when it is cut."""
    clips: tuple[np.ndarray, ...]  # (n_samples,) float32 each, the clips themselves (not copied)
    clip_index: np.ndarray  # (n_windows,) the clip each window is cut from
    start: np.ndarray  # (n_windows,) its first sample
    width: int  # window length in samples

    @classmethod
    def of(cls, clips: list[Clip], a: AudioParams) -> "Windows":
        starts = [window_starts(len(c.samples), a) for c in clips]
        clip_index = np.repeat(np.arange(len(clips)), [len(st) for st in starts])
        return cls(tuple(c.samples for c in clips), clip_index, np.concatenate([np.zeros(0, np.int64), *starts]),
                   a.window_samples)

    def __len__(self) -> int:
        return len(self.start)

    def cut(self, indices: np.ndarray | None = None) -> np.ndarray:
        """(len(indices), width) float32: the windows at `indices`, default all."""
        idx = np.arange(len(self)) if indices is None else indices
        out = np.empty((len(idx), self.width), np.float32)
        for row, i in enumerate(idx):
            out[row] = tile_to(self.clips[self.clip_index[i]], self.width)[self.start[i]:self.start[i] + self.width]
        return out

    def chunks(self, size: int = CHUNK_WINDOWS) -> Iterator[np.ndarray]:
        """Every window in order, (<= size, width) at a time."""
        for i in range(0, len(self), size):
            yield self.cut(np.arange(i, min(i + size, len(self))))

    def subset(self, limit: int, rng: np.random.Generator) -> "Windows":
        """At most `limit` windows, drawn at random when there are more; rng is untouched
        otherwise, so trainings on small clip sets do not depend on the limit."""
        if len(self) <= limit:
            return self
        keep = np.sort(rng.choice(len(self), size=limit, replace=False))
        return replace(self, clip_index=self.clip_index[keep], start=self.start[keep])


def window_clip_ids(clips: list[Clip], a: AudioParams, windows_per_part: int = 16) -> np.ndarray:
    """(n_windows,) index of the clip each window of Windows.of(clips) comes from; with a
    single clip, of its 8 s part instead, so that leave-one-out still leaves something."""
    ids = Windows.of(clips, a).clip_index
    return np.arange(len(ids)) // windows_per_part if len(clips) == 1 else ids


@dataclass(frozen=True)
class Backgrounds:
    """What film-like degradation mixes in: the user's negative clips and generated sound,
    every one scaled to unit RMS."""
    clips: list[np.ndarray]
    generated: list[np.ndarray]

    @classmethod
    def of(cls, clips: list[np.ndarray], generated: list[np.ndarray]) -> "Backgrounds":
        return cls([c / rms(c) for c in clips], generated)


def degrade(windows: np.ndarray, bg: Backgrounds, p: Params, rng: np.random.Generator,
            probability: float | np.ndarray | None = None) -> np.ndarray:
    """Film-like copies of (n, window_samples) windows, each degraded with `probability` (one
    for all, or (n,) one per window)."""
    prob = np.broadcast_to(p.train.augment_probability if probability is None else probability, len(windows))
    if len(windows) == 0:
        return windows
    return np.stack([film_like(w, bg.clips, bg.generated, p.audio.sample_rate_hz, rng, p.train.snr_db_range, p.augment)
                     if rng.random() < pr else w for w, pr in zip(windows, prob)])


def features(windows: np.ndarray, a: AudioParams, device: torch.device, batch: int = 32) -> torch.Tensor:
    """(n, window_samples) audio -> (n, n_mels, window_frames) log-mel on `device`."""
    out = [log_mel(torch.from_numpy(windows[i:i + batch]).to(device), a) for i in range(0, len(windows), batch)]
    return torch.cat(out) if out else torch.zeros(0, a.n_mels, a.window_frames, device=device)


def embed_features(model: Model, feats: torch.Tensor, batch: int = 64) -> np.ndarray:
    """(n, n_mels, window_frames) -> (n, dim) float32 embeddings, eval mode, no gradients."""
    out = [embed(model, feats[i:i + batch]) for i in range(0, len(feats), batch)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.params.encoder.embedding_dim), np.float32)


def memory_chunks(windows: Windows, bg: Backgrounds, p: Params, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The windows a memory stores, a chunk at a time: every clean window, then each round
    of film-like copies of them (p.train.augmented_memory_copies rounds)."""
    yield from windows.chunks()
    for _ in range(p.train.augmented_memory_copies):
        for chunk in windows.chunks():
            yield degrade(chunk, bg, p, rng, probability=1.0)


def degraded_chunks(windows: Windows, repeats: int, bg: Backgrounds, p: Params, rng: np.random.Generator,
                    probability: float | np.ndarray | None = None) -> Iterator[np.ndarray]:
    """`repeats` rounds of film-like copies of the windows, a chunk at a time; `probability`
    as degrade takes it, per window of `windows` when an array."""
    prob = np.broadcast_to(p.train.augment_probability if probability is None else probability, len(windows))
    for _ in range(repeats):
        for i, chunk in zip(range(0, len(windows), CHUNK_WINDOWS), windows.chunks()):
            yield degrade(chunk, bg, p, rng, prob[i:i + len(chunk)])


def chunk_features(chunks: Iterable[np.ndarray], a: AudioParams, device: torch.device) -> torch.Tensor:
    """Windows given a chunk at a time -> (n, n_mels, window_frames) log-mel on `device`."""
    out = [features(c, a, device) for c in chunks]
    return torch.cat(out) if out else torch.zeros(0, a.n_mels, a.window_frames, device=device)


def embed_chunks(model: Model, chunks: Iterable[np.ndarray], device: torch.device) -> np.ndarray:
    """Windows given a chunk at a time -> (n, dim) float32 embeddings: only one chunk's
    audio and features are held at once."""
    out = [embed_features(model, features(c, model.params.audio, device)) for c in chunks]
    return np.concatenate(out) if out else np.zeros((0, model.params.encoder.embedding_dim), np.float32)


def average_weights(state_dicts: list[dict[str, torch.Tensor]], weights: list[float] | None = None
                    ) -> dict[str, torch.Tensor]:
    """State dicts of one architecture -> their weighted mean (default: equal weights) for every
    floating-point tensor (weights, biases, batch-norm statistics); integer buffers (batch-norm's
    step counts) are the first dict's. Serves checkpoint averaging along a training run (as in
    SWA, Izmailov et al., 2018) and the mix of a fine-tuned model with its base (WiSE-FT,
    Wortsman et al., 2022)."""
    weights = [1.0 / len(state_dicts)] * len(state_dicts) if weights is None else weights
    first = state_dicts[0]
    return {k: sum(w * sd[k].to(v.device) for w, sd in zip(weights, state_dicts)) if v.is_floating_point() else v
            for k, v in first.items()}


def base_folder(base: str | Path | None) -> Path | None:
    """The folder of the model that `train --base` names: `base`, or the shipped base encoder's
    when None; "none" (any case) is None: train from scratch. SpeakertagError when the shipped
    base encoder is missing from this installation."""
    if base is not None and str(base).lower() == "none":
        return None
    folder = base or shipped_base_dir()
    if folder is None:
        raise SpeakertagError("the shipped base encoder is missing from this installation (speakertag/base_model): "
                              "reinstall speakertag, or give --base DIR, or --base none to train from scratch")
    return Path(folder)


def train_params(seed: int = 0, steps: int | None = None, target_precision: float | None = None,
                 target_share: float | None = None) -> Params:
    """Params() with the training options of `speakertag train` (None or 0: the default)."""
    changes: dict = {"seed": seed}
    if steps is not None:
        changes["max_steps"] = steps
    if target_precision:
        changes.update(threshold_rule="precision", target_precision=target_precision)
    if target_share:
        changes["target_share"] = target_share
    p = Params()
    return replace(p, train=replace(p.train, **changes))


def train_from(base_dir: Path | None, positive: list[str | Path], negative: list[str | Path] | None,
               params: Params, name: str = "target", progress: Callable[[StepInfo], None] | None = None,
               device: str | None = None) -> tuple[Model, Memory, TrainReport]:
    """`train` as `speakertag train` runs it: fine-tuning the model in base_dir (None: from
    scratch), calibrated against base_dir's impostors, else the shipped base encoder's (also
    from scratch); negatives None: the bank shipped with the base encoder."""
    base = load_model(base_dir) if base_dir else None
    return train(positive, negative, params, base, name, progress, device,
                 impostors_of(base_dir) or impostors_of(shipped_base_dir()))


def save_voice(out_dir: Path, model: Model, memory: Memory, source: Path | None = None) -> None:
    """Write model.pt and memory.npz as the model folder out_dir, whole or not at all
    (io_utils.write_model_folder), starting from a copy of the folder `source` (None: empty)."""
    write_model_folder(out_dir, lambda folder: (save_model(model, folder), save_memory(memory, folder)), source)


def train(positive: list[str | Path], negative: list[str | Path] | None = None, params: Params | None = None,
          base: Model | str | Path | None = SHIPPED, name: str = "target",
          progress: Callable[[StepInfo], None] | None = None, device: str | None = None,
          impostors: list[str | Path] | None = None, stream: int | None = None,
          channels: str = "auto") -> tuple[Model, Memory, TrainReport]:
    """Train (or fine-tune `base`) on positive and negative clips.

    positive: the target: clips (files, or folders searched recursively), or moments of a
    recording, "film.mkv@190-205,1022.5-1040" (seconds or [hh:]mm:ss[.f]) or "film.mkv@spans.txt"
    (Audacity labels, or CSV start,end[,label]; the rows labelled `name` if any): see
    speakertag.spans. Such moments are read by seeking, from the recording's audio track
    `stream` (None: its default) heard as `channels` says (audio.CHANNEL_CHOICES).
    negative: clips of other voices, music and noise, and moments of a recording as for
    `positive` (a spans file gives its rows not labelled `name`); without clips (None, or
    moments alone), the bank of such sounds shipped with the base encoder (the base folder's
    `negatives/`, else the shipped one's) is used, with the moments.
    base: the Model to fine-tune, or its folder, or SHIPPED (the shipped base encoder); None
    trains from scratch.
    impostors: clips of voices that neither the base encoder nor this training has heard;
    they join the held-back negatives, so that the threshold is calibrated against unseen
    voices as a film has them, not only against the negatives' voices the model learned.
    None: the base folder's (base given as SHIPPED or a folder), else none.
    Returns the model, its memory (every positive window, clean and degraded; every
    negative window; the calibrated threshold) and a report. The memory's info records
    the clip paths (`positive_clips`, `negative_clips`) and the moments of recordings
    (`films`, as `refine` records its corrections), so that it can be rebuilt.
    """
    try:
        check_voice_name(name)
    except ValueError as e:
        raise SpeakertagError(str(e)) from None
    t0 = time.monotonic()
    base_dir = None
    if isinstance(base, (str, Path)):
        base_dir = shipped_base_dir() if isinstance(base, str) and base == SHIPPED else Path(base)
        if base_dir is None:
            raise SpeakertagError("the shipped base encoder is missing from this installation (speakertag/base_model)")
        base = load_model(base_dir)
        impostors = impostors_of(base_dir) if impostors is None else impostors
    p = params or Params()
    if base is not None:  # the base fixes the front end and the architecture; training is ours
        p = replace(p, audio=base.params.audio, encoder=base.params.encoder)
    files, films = split_sources(positive, name)
    pos_clips, skipped_pos = load_clips(files, "positive", p) if files else ([], [])
    span_clips, skipped_spans, films = load_film_spans(films, p, stream, channels)
    pos_clips += span_clips
    target_s = sum(len(c.samples) for c in pos_clips) / p.audio.sample_rate_hz
    if target_s < p.train.min_target_s:
        what = "spans" if not files else "clips and spans" if films else "clips"
        raise SpeakertagError(f"the positive {what} hold {target_s:.1f} s of audio; training needs at least "
                              f"{p.train.min_target_s:g} s of the target's speech")
    neg_files, neg_films = split_sources(negative or [], name, others=True)
    _check_apart(films, neg_films)
    shipped_negatives = not neg_files  # a few moments of other voices join the bank, clips replace it
    if shipped_negatives:
        neg_files = negatives_of(base_dir) or negatives_of(shipped_base_dir())
        if not neg_files:
            raise SpeakertagError("no negative clips given, and the bank of other sounds shipped with speakertag "
                                  "is missing from this installation: give --negative clips of other voices")
    neg_clips, skipped_neg = load_clips(neg_files, "negative", p)
    neg_span_clips, skipped_neg_spans, neg_films = load_film_spans(neg_films, p, stream, channels, "negative")
    neg_clips += neg_span_clips

    def audio_hash(c: Clip) -> bytes:
        return hashlib.sha256(c.samples.tobytes()).digest()

    # The same clip on both sides (the same file, or a copy of it) leaves no voice to learn.
    positive_audio = {audio_hash(c): c.name for c in pos_clips}
    for c in neg_clips:
        twin = positive_audio.get(audio_hash(c))
        if twin is not None:
            what = ("is given as both a positive and a negative clip" if twin == c.name else
                    f"(a negative clip) has the same audio as the positive clip {twin}")
            raise SpeakertagError(f"{c.name} {what}: a clip cannot be both the target and another voice")
    imp_clips = load_clips(impostors, "impostor", p)[0] if impostors else []
    beds = film_beds(films, span_clips, base, p, stream, channels, device)
    model, memory, report = train_on_clips(pos_clips, neg_clips, p, base, name, progress, device, imp_clips, beds=beds)
    problem = calibration_problem(report.calibration, p.train.max_negative_share)
    if problem:  # a model that tags everything (or nothing) is worse than none
        raise SpeakertagError(f"training gave no usable voice: {problem}")
    model.meta = {**model.meta, "history": [*model.meta.get("history", []), {
        "action": "fine-tune" if base is not None else "train",
        "positive": [c.name for c in pos_clips], "negative": [c.name for c in neg_clips],
        "steps": report.steps, "best_step": report.best_step, "speakertag_version": speakertag_version()}]}
    # Absolute paths: `refine` re-embeds the clips later, maybe from another folder. The moments
    # of recordings are recorded as refine records a corrected film's (refine.FilmMaterial).
    file_clips = pos_clips[:len(pos_clips) - len(span_clips)]
    recorded: dict[Path, dict] = {}
    for key, spans_of in (("positive_spans", films), ("negative_spans", neg_films)):
        for f in spans_of:
            entry = recorded.setdefault(f.film.resolve(), {"film": str(f.film.resolve()), "stream": stream,
                                                           "channels": channels, "positive_spans": [],
                                                           "negative_spans": []})
            entry[key] = [list(s) for s in f.spans]
    memory = replace(memory, info={
        **memory.info, "positive_clips": [str(Path(c.name).resolve()) for c in file_clips],
        "negative_clips": [str(Path(c.name).resolve()) for c in neg_clips[:len(neg_clips) - len(neg_span_clips)]],
        **({"films": list(recorded.values())} if recorded else {})})
    return model, memory, replace(report, seconds=time.monotonic() - t0,
                                  skipped=tuple(skipped_pos + skipped_spans + skipped_neg + skipped_neg_spans),
                                  n_positive_clips=len(file_clips), n_positive_spans=len(span_clips),
                                  positive_films=tuple(str(f.film) for f in films),
                                  shipped_negatives=shipped_negatives,
                                  film_bed_s=sum(len(b) for b in beds) / p.audio.sample_rate_hz,
                                  n_negative_spans=len(neg_span_clips))


def train_on_clips(pos_clips: list[Clip], neg_clips: list[Clip], p: Params, base: Model | None = None,
                   name: str = "target", progress: Callable[[StepInfo], None] | None = None,
                   device: str | None = None, imp_clips: list[Clip] | None = None, validate: bool = True,
                   beds: list[np.ndarray] | None = None) -> tuple[Model, Memory, TrainReport]:
    """The training itself, on decoded clips (see `train`): `fine_tune`, then `build_memory`.
    p.audio and p.encoder must be the base's. The model's history and the memory's list of
    sources are the caller's. validate=False: no clips held back, no evaluation, no early
    stopping; the last step's weights are kept (a few fine-tuning steps, where an evaluation
    would choose nothing). beds: more backgrounds for the film-like degradation (film_beds)."""
    t0 = time.monotonic()
    tp, a = p.train, p.audio
    rng = np.random.default_rng(tp.seed)  # one stream for both stages, drawn in this order
    torch.manual_seed(tp.seed)
    dev = resolve_device(device)
    imp_clips = imp_clips or []
    if validate:
        pos_train, pos_val = split_clips(pos_clips, tp.val_fraction, rng)
        neg_train, neg_val = split_clips(neg_clips, tp.val_fraction, rng)
        held_back = (pos_val, neg_val + imp_clips)
    else:
        pos_train, neg_train, held_back = pos_clips, neg_clips, None
    generated = generated_backgrounds(a.sample_rate_hz, rng)
    beds = [b / rms(b) for b in beds or []]
    all_bg = Backgrounds.of([c.samples for c in neg_clips], generated)
    # The training clips' unit-RMS copies are all_bg's own where the clips are the same.
    unit = {id(c): x for c, x in zip(neg_clips, all_bg.clips)}
    bg = Backgrounds([unit[id(c)] if id(c) in unit else c.samples / rms(c.samples) for c in neg_train] + beds, generated)
    all_bg = Backgrounds(all_bg.clips + beds, generated)

    model = copy.deepcopy(base) if base is not None else new_model(p)
    model.params = p
    model.meta = {**model.meta, "name": name}
    model.encoder.to(dev)
    steps, best_step = fine_tune(model, base, pos_train, neg_train, held_back, bg, all_bg, p, rng, dev, progress)
    memory, calib = build_memory(model, pos_clips, neg_clips, imp_clips, all_bg, p, rng, dev, name)
    model.encoder.cpu()
    report = TrainReport(len(pos_clips), len(neg_clips), sum(len(c.samples) for c in pos_clips) / a.sample_rate_hz,
                         sum(len(c.samples) for c in neg_clips) / a.sample_rate_hz, steps, best_step,
                         time.monotonic() - t0, calib, ())
    return model, memory, report


@dataclass(frozen=True)
class TrainedPart:
    """The part of the encoder that fine_tune trains, and how its steps see the windows."""
    parameters: list[torch.nn.Parameter]
    inputs: Callable[[torch.Tensor], torch.Tensor]  # (n, n_mels, window_frames) log-mel -> what the steps feed
    forward: Callable[[torch.Tensor], torch.Tensor]  # train-mode embeddings of inputs, with gradients
    embed: Callable[[torch.Tensor], np.ndarray]  # eval-mode embeddings of inputs, (n, dim) float32


def whole_encoder(model: Model) -> TrainedPart:
    """Every layer trained, on log-mel windows."""
    return TrainedPart(list(model.encoder.parameters()), lambda feats: feats, model.encoder,
                       lambda feats: embed_features(model, feats))


def head_only(model: Model) -> TrainedPart:
    """The head alone trained (its pooling norm and projection), on each window's pooled
    statistics, computed once per pool instead of at every step."""
    enc = model.encoder

    @torch.no_grad()
    def stats(feats: torch.Tensor) -> torch.Tensor:
        enc.eval()
        out = [enc.stats(feats[i:i + 64]) for i in range(0, len(feats), 64)]
        return torch.cat(out) if out else feats.new_zeros(0, enc.head.in_features)

    @torch.no_grad()
    def embed_stats(x: torch.Tensor) -> np.ndarray:
        enc.eval()
        return enc.embed_stats(x).float().cpu().numpy()

    return TrainedPart([*enc.pool_norm.parameters(), *enc.head.parameters()], stats, enc.embed_stats, embed_stats)


def fine_tune(model: Model, base: Model | None, pos_train: list[Clip], neg_train: list[Clip],
              held_back: tuple[list[Clip], list[Clip]] | None, bg: Backgrounds, all_bg: Backgrounds, p: Params,
              rng: np.random.Generator, dev: torch.device, progress: Callable[[StepInfo], None] | None = None
              ) -> tuple[int, int]:
    """Train model.encoder (on `dev`) in place with triplets of film-like training windows and
    hard negatives; returns (steps run, best step).

    held_back: (positive, negative) clips to validate on every p.train.eval_every_steps steps:
    the encoder ends as the mean of its weights at those evaluations, and stops early when
    they no longer gain. None: no evaluation, every step runs and the last weights stay.
    base: the model fine-tuned; its weights are mixed back in (p.train.fine_tuned_share)."""
    tp, a = p.train, p.audio
    gen = torch.Generator().manual_seed(tp.seed)
    enc = model.encoder
    # Fine-tuning a base trains its head only: the frame layers and the attention keep what
    # pretraining on hundreds of voices taught them.
    part = head_only(model) if base is not None and tp.fine_tune_layers == "head" else whole_encoder(model)
    validation_f1 = _validation(part, held_back, pos_train, neg_train, bg, all_bg, p, rng, dev)
    opt = torch.optim.AdamW(part.parameters, lr=tp.learning_rate, weight_decay=tp.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, tp.max_steps))
    pos_train_windows, neg_train_windows = Windows.of(pos_train, a), Windows.of(neg_train, a)
    best_f1, best_step, evals_without_gain, steps_run, val_f1 = -1.0, 0, 0, 0, None
    checkpoints = []  # the weights at every evaluation
    b = tp.batch_size
    for step in range(1, tp.max_steps + 1):
        if (step - 1) % tp.mining_every_steps == 0:
            # Refresh the pools: fresh degradations of every window, embedded by the current
            # model, so that mining sees which negatives still violate the margin now.
            # Beyond tp.pool_windows windows, each refresh draws another random subset.
            pos_pool = part.inputs(chunk_features(degraded_chunks(pos_train_windows.subset(tp.pool_windows, rng), 1,
                                                                  bg, p, rng), a, dev))
            neg_pool = part.inputs(chunk_features(degraded_chunks(neg_train_windows.subset(tp.pool_windows, rng), 1,
                                                                  bg, p, rng), a, dev))
            pos_emb = torch.from_numpy(part.embed(pos_pool))
            neg_emb = torch.from_numpy(part.embed(neg_pool))
            centroid = torch.nn.functional.normalize(pos_emb.mean(0, keepdim=True), dim=-1)
        ai = rng.integers(len(pos_pool), size=b)
        pi = (ai + rng.integers(1, max(2, len(pos_pool)), size=b)) % len(pos_pool)  # another window
        # cos(anchor, positive) is estimated by the anchor's cosine to the positives' mean.
        ap_sim = (pos_emb[ai] @ centroid.T).squeeze(1)
        hard = mine_hard_negatives(pos_emb[ai], ap_sim, neg_emb, tp.margin, 16, gen).numpy()
        ri = rng.integers(len(neg_pool), size=b)
        enc.train()
        emb = part.forward(torch.cat([pos_pool[ai], pos_pool[pi], neg_pool[hard], neg_pool[ri]]))
        e_a, e_p, e_hard, e_rand = emb.split(b)
        loss = triplet_loss(e_a, e_p, e_hard, tp.margin) + triplet_loss(e_a, e_p, e_rand, tp.margin)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        steps_run = step
        if validation_f1 is not None and (step % tp.eval_every_steps == 0 or step == tp.max_steps):
            val_f1 = validation_f1()
            checkpoints.append(copy.deepcopy(enc.state_dict()))
            if val_f1 > best_f1 + 1e-4:
                best_f1, best_step, evals_without_gain = val_f1, step, 0
            else:
                evals_without_gain += 1
        if progress:
            progress(StepInfo(step, tp.max_steps, float(loss.detach()), val_f1))
        if evals_without_gain >= tp.patience_evals:
            break

    if checkpoints:
        # The mean of the checkpoints, not the one that validated best: a validation F1 on a
        # fifth of a minute of clips is too noisy to pick one (dev: fewer bad seeds).
        enc.load_state_dict(average_weights(checkpoints[::-1]))
    if held_back is None:
        best_step = steps_run
    if base is not None and tp.fine_tuned_share < 1.0:
        # Part of the way back to the base: the fine-tuned weights know the target, the base's the
        # many voices of pretraining; their mix scores films more steadily than the fine-tuned alone.
        share = tp.fine_tuned_share
        enc.load_state_dict(average_weights([enc.state_dict(), base.encoder.state_dict()], [share, 1.0 - share]))
    return steps_run, best_step


def _validation(part: TrainedPart, held_back: tuple[list[Clip], list[Clip]] | None, pos_train: list[Clip],
                neg_train: list[Clip], bg: Backgrounds, all_bg: Backgrounds, p: Params, rng: np.random.Generator,
                dev: torch.device) -> Callable[[], float] | None:
    """validation_f1() of fine_tune: the best-threshold F1 of the encoder as it is now, on
    film-like windows of the held-back clips against memories of the training clips (None:
    nothing held back). Every positive window is degraded, held-back noise too; the windows'
    features are computed here, once: each evaluation only runs the encoder."""
    if held_back is None:
        return None
    tp, a = p.train, p.audio
    pos_val, neg_val = held_back
    cap, copies = tp.pool_windows, 1 + tp.augmented_memory_copies
    val_pos = part.inputs(chunk_features(degraded_chunks(Windows.of(pos_val, a).subset(cap // 2, rng), 2, all_bg, p,
                                                         rng, 1.0), a, dev))
    val_neg = part.inputs(chunk_features(degraded_chunks(Windows.of(neg_val, a).subset(cap, rng), 1, all_bg,
                                                         p, rng, tp.negative_augment_probability), a, dev))
    val_memory_pos = part.inputs(chunk_features(memory_chunks(Windows.of(pos_train, a).subset(cap // copies, rng), bg,
                                                              p, rng), a, dev))
    use_negatives = p.tag.negative_weight > 0
    val_memory_neg = part.inputs(chunk_features(memory_chunks(Windows.of(neg_train if use_negatives else [], a)
                                                              .subset(cap // copies, rng), bg, p, rng), a, dev))

    def validation_f1() -> float:
        scorer = Scorer(part.embed(val_memory_pos), part.embed(val_memory_neg), p.tag.top_k, p.tag.negative_weight)
        return calibrate_threshold(scorer(part.embed(val_pos)), scorer(part.embed(val_neg)),
                                   target_share=tp.target_share).f1

    return validation_f1


def build_memory(model: Model, pos_clips: list[Clip], neg_clips: list[Clip], imp_clips: list[Clip],
                 bg: Backgrounds, p: Params, rng: np.random.Generator, dev: torch.device, name: str
                 ) -> tuple[Memory, Calibration]:
    """The trained model's memories (every clip's windows, clean and film-like, laid out as
    `memory_entry_clips` says) with the threshold calibrated leave-one-clip-out on fresh
    film-like copies of every clip, against the negatives and the impostors nearest the
    target. model.encoder is on `dev`."""
    tp, a = p.train, p.audio
    pos_windows, neg_windows = Windows.of(pos_clips, a), Windows.of(neg_clips, a)
    positives = embed_chunks(model, memory_chunks(pos_windows, bg, p, rng), dev)
    negatives = embed_chunks(model, memory_chunks(neg_windows, bg, p, rng), dev)
    pos_ids, neg_ids = window_clip_ids(pos_clips, a), window_clip_ids(neg_clips, a)
    # Calibrate on every clip, leave-one-clip-out: fresh film-like degradations of each
    # clip's windows, scored against the final memories without that clip's own entries,
    # plus the unseen impostor voices. Far more windows than the held-back split alone,
    # so the threshold no longer swings with which clips were held back.
    rounds = tp.calibration_rounds
    # Moments of a film are film sound already: degraded once more they would score lower
    # than the target does in that film, and set the threshold too low.
    pos_degrade = np.where([c.film_sound for c in pos_clips], tp.span_degrade_probability, 1.0)[pos_windows.clip_index]
    cal_pos = embed_chunks(model, degraded_chunks(pos_windows, 2 * rounds, bg, p, rng, pos_degrade), dev)
    cal_neg = embed_chunks(model, degraded_chunks(neg_windows, rounds, bg, p, rng, tp.negative_augment_probability), dev)
    # The impostors, with speed copies of each as more voices; only the voices most like the
    # target count: a target with look-alikes gets a stricter threshold, one without keeps its recall.
    imp_voices = Windows.of([Clip(f"{c.name}@{f:g}", change_speed(c.samples, f))
                             for c in imp_clips for f in (1.0, *tp.impostor_speed_factors)], a)
    cal_imp = embed_chunks(model, degraded_chunks(imp_voices, 1, bg, p, rng, tp.negative_augment_probability), dev)
    k, w, copies = p.tag.top_k, p.tag.negative_weight, 1 + tp.augmented_memory_copies
    pos_memory_ids, neg_memory_ids = np.tile(pos_ids, copies), np.tile(neg_ids, copies)

    def calibration_scores(queries: np.ndarray, own_pos_clip: np.ndarray | None = None,
                           own_neg_clip: np.ndarray | None = None) -> np.ndarray:
        """The tagging score, except that a window never matches entries of its own clip."""
        none = np.full(len(queries), -1)
        s = top_k_mean_excluding(queries, none if own_pos_clip is None else own_pos_clip, positives, pos_memory_ids, k)
        if w > 0:
            s = s - w * top_k_mean_excluding(queries, none if own_neg_clip is None else own_neg_clip,
                                             negatives, neg_memory_ids, k)
        return s

    imp_scores = calibration_scores(cal_imp)
    calib = calibrate_threshold(
        calibration_scores(cal_pos, own_pos_clip=np.tile(pos_ids, 2 * rounds)),
        calibration_scores(cal_neg, own_neg_clip=np.tile(neg_ids, rounds)),
        tp.threshold_rule, tp.target_precision, tp.target_share,
        imp_scores[nearest_groups(imp_scores, imp_voices.clip_index, tp.calibration_impostors)],
        tp.impostor_share, tp.edge_quantile, tp.f1_tolerance)
    return Memory(positives, negatives, p, model.fingerprint, calib.threshold, name,
                  {"calibration": calib.__dict__, "source": name}, calib.edge_threshold), calib
