"""Corrections: a person's fixed labels for one film -> a refined model, memory and threshold.

`refine` tags the film with the current model, takes the corrected target segments as new
positives and the current detections outside them (false alarms) as new negatives, cuts
their audio from the film in one streaming pass, and then either

- fine-tunes the encoder for a few steps on the new material plus everything the memory
  was built from (the training clips, the material of earlier corrections), and rebuilds
  both memories and the threshold from all of it with the new encoder; or
- when some of that earlier audio can no longer be read (or `steps` is 0), keeps the
  encoder: the stored embeddings cannot be re-embedded, and embeddings of an old encoder
  are meaningless to a new one. The new windows are embedded by the unchanged encoder and
  added to the memories, and the threshold is recalibrated on the film's material.

Either way every stored embedding comes from the model it is saved with. The memory's
info lists its sources (`positive_clips`, `negative_clips`, and `films`: each corrected
film with the spans taken from it), so that a later refine can re-embed them again.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .audio import decode_blocks, probe
from .augment import generated_backgrounds
from .errors import SpeakertagError
from .memory import Memory
from .model import Model, resolve_device
from .params import AudioParams, Params
from .scoring import Calibration, calibrate_threshold, top_k_mean_excluding
from .segments import cell_scores
from .tagging import Voice, check_pair, tag
from .train import (
    Backgrounds,
    Clip,
    StepInfo,
    clip_windows,
    degrade,
    embed_features,
    features,
    load_clips,
    memory_windows,
    train_on_clips,
    window_clip_ids,
)

Span = tuple[float, float]  # (start_s, end_s)
END_TOLERANCE_S = 0.5  # a label may end this far past the decoded audio (container durations differ)


@dataclass(frozen=True)
class RefineOptions:
    steps: int = 30  # fine-tuning steps; 0 keeps the encoder and only updates memories and threshold
    seed: int = 0
    stream: int | None = None  # the film's audio track (0 = first); None: its default track
    min_span_s: float = 0.5  # shorter corrected segments and false alarms are not used
    max_new_s: float = 600.0  # at most this much new positive and this much false-alarm audio
    guard_s: float | None = None  # detections this close to a corrected segment are not false alarms
    #                               (a window's edge effect); None: half a window


@dataclass(frozen=True)
class RefineReport:
    film: str
    duration_s: float
    positive_s: float  # corrected target seconds added as positives
    false_alarm_s: float  # seconds of false alarms added as negatives
    n_positive_spans: int
    n_false_alarm_spans: int
    detected_spans: tuple[Span, ...]  # what the model detected before the correction
    encoder: str  # "fine-tuned" or "kept"
    kept_why: str  # why the encoder was kept; "" when fine-tuned
    steps: int
    threshold_before: float
    calibration: Calibration | None  # None: too little material, the old threshold stays
    seconds: float
    notes: tuple[str, ...]  # corrected segments not used, and why

    @property
    def detected_s(self) -> float:
        return sum(e - s for s, e in self.detected_spans)


# ---- the corrected labels ----

@dataclass(frozen=True)
class LabelRow:
    start_s: float
    end_s: float
    label: str | None  # None when the file has no label column or the cell is empty
    line: int


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_labels(path: str | Path) -> list[LabelRow]:
    """Rows of an Audacity label file (start<TAB>end<TAB>label; Audacity's "\\" frequency lines
    are skipped) or a CSV file start,end[,label] (speakertag's own start,end,score[,label]
    too; a first row that is not numbers is a header, and names the label column)."""
    path = Path(path)
    if not path.is_file():
        raise SpeakertagError(f"no such labels file: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SpeakertagError(f"labels file {path} is not UTF-8 text") from None
    tabbed = any("\t" in line for line in text.splitlines())
    lines = [line.split("\t") for line in text.splitlines()] if tabbed else list(csv.reader(text.splitlines()))
    rows, label_col, header_seen = [], None, False
    for n, rec in enumerate(lines, 1):
        rec = [c.strip() for c in rec]
        if not any(rec) or rec[0].startswith(("#", "\\")):
            continue
        start, end = (_number(rec[0]), _number(rec[1])) if len(rec) > 1 else (None, None)
        if start is None or end is None:
            if rows or header_seen:
                raise SpeakertagError(f"{path}: line {n}: expected start and end times in seconds, got {','.join(rec)!r}")
            header_seen = True  # a header: its label column, if it names one
            names = [c.lower() for c in rec]
            label_col = next((names.index(k) for k in ("label", "speaker", "name") if k in names), None)
            continue
        if start < 0 or end <= start:
            raise SpeakertagError(f"{path}: line {n}: bad segment {rec[0]} - {rec[1]}: "
                                  "times must be seconds with 0 <= start < end")
        if tabbed or label_col is None:  # Audacity's third field; a CSV's third unless it is a number (a score)
            extra = [c for c in rec[2:] if c and (tabbed or _number(c) is None)]
            label = extra[0] if extra else None
        else:
            label = rec[label_col] if label_col < len(rec) and rec[label_col] else None
        rows.append(LabelRow(start, end, label, n))
    if not rows:
        raise SpeakertagError(f"labels file {path} holds no segments")
    return rows


def corrected_spans(rows: Sequence[LabelRow], voice: str, path: str | Path = "labels") -> list[Span]:
    """The target segments among label rows: the rows labelled `voice` when any is; every row
    when the file has one label or none (a file for this voice alone). Sorted, overlaps joined."""
    labels = sorted({r.label for r in rows if r.label is not None})
    if voice in labels:
        chosen = [r for r in rows if r.label == voice]
    elif len(labels) <= 1:
        chosen = list(rows)
    else:
        raise SpeakertagError(f"labels file {path} has no rows for the voice {voice!r} "
                              f"(its labels: {', '.join(labels[:8])}{' ...' if len(labels) > 8 else ''})")
    return merge_spans([(r.start_s, r.end_s) for r in chosen])


def read_corrections(path: str | Path, voice: str) -> list[Span]:
    """read_labels + corrected_spans: the corrected target segments of `voice` in a label file."""
    return corrected_spans(read_labels(path), voice, path)


# ---- spans: pure interval arithmetic on (start_s, end_s) pairs ----

def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Sorted union of spans; touching or overlapping spans become one."""
    out: list[list[float]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def subtract_spans(spans: Iterable[Span], cut: Iterable[Span]) -> list[Span]:
    """The parts of `spans` outside every span of `cut`, sorted."""
    cut = merge_spans(cut)
    out = []
    for s, e in merge_spans(spans):
        for cs, ce in cut:
            if ce <= s or cs >= e:
                continue
            if cs > s:
                out.append((s, cs))
            s = max(s, ce)
        if e > s:
            out.append((s, e))
    return out


def overlap_s(a: Span, spans: Iterable[Span]) -> float:
    """Seconds of span `a` covered by `spans` (which do not overlap one another)."""
    return sum(max(0.0, min(a[1], e) - max(a[0], s)) for s, e in spans)


def cap_spans(spans: Sequence[Span], priority: Sequence[float], max_s: float) -> list[Span]:
    """At most `max_s` seconds of `spans`, highest priority first (the last one shortened to
    fit); returned in time order."""
    kept, total = [], 0.0
    for i in np.argsort(-np.asarray(priority, np.float64), kind="stable"):
        s, e = spans[i]
        if total >= max_s:
            break
        e = min(e, s + (max_s - total))
        kept.append((s, e))
        total += e - s
    return sorted(kept)


def cut_spans(blocks: Iterable[np.ndarray], spans_s: Sequence[Span], sample_rate_hz: int) -> list[np.ndarray]:
    """The samples of each span from consecutive mono blocks (a whole track, as decode_blocks
    yields it): one pass, holding only the spans' samples, that stops reading once the last
    span is complete. Returns one float32 array per span (shorter if the track ends first)."""
    bounds = [(round(s * sample_rate_hz), round(e * sample_rate_hz)) for s, e in spans_s]
    parts: list[list[np.ndarray]] = [[] for _ in bounds]
    last = max((e for _, e in bounds), default=0)
    pos = 0
    try:
        for block in blocks:
            b0, b1 = pos, pos + len(block)
            for part, (s, e) in zip(parts, bounds):
                lo, hi = max(s, b0), min(e, b1)
                if hi > lo:
                    part.append(block[lo - b0:hi - b0].copy())  # a copy: a view would keep the block
            pos = b1
            if pos >= last:
                break
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:  # stop the decoder now, not when garbage-collected
            close()
    return [np.concatenate(p).astype(np.float32) if p else np.zeros(0, np.float32) for p in parts]


# ---- what the memory was built from ----

@dataclass(frozen=True)
class FilmMaterial:
    """The spans of one corrected film that a memory holds windows of (memory info "films")."""
    film: str  # absolute path
    stream: int | None
    positive_spans: tuple[Span, ...]  # corrected target segments
    negative_spans: tuple[Span, ...]  # false alarms

    def to_dict(self) -> dict:
        return {"film": self.film, "stream": self.stream, "positive_spans": [list(s) for s in self.positive_spans],
                "negative_spans": [list(s) for s in self.negative_spans]}

    @classmethod
    def from_dict(cls, d: dict) -> FilmMaterial:
        return cls(str(d["film"]), d.get("stream"), tuple((float(s), float(e)) for s, e in d["positive_spans"]),
                   tuple((float(s), float(e)) for s, e in d["negative_spans"]))

    def same_film(self, other: FilmMaterial) -> bool:
        return (self.film, self.stream) == (other.film, other.stream)

    def clips(self, sample_rate_hz: int) -> tuple[list[Clip], list[Clip]]:
        """Positive and negative clips, cut from the film in one pass."""
        spans = [*self.positive_spans, *self.negative_spans]
        samples = cut_spans(decode_blocks(self.film, sample_rate_hz, self.stream), spans, sample_rate_hz)
        clips = [Clip(f"{self.film}@{s:.3f}-{e:.3f}", x) for (s, e), x in zip(spans, samples)]
        return clips[:len(self.positive_spans)], clips[len(self.positive_spans):]


def _n_windows(n_samples: int, a: AudioParams) -> int:
    """Windows that clip_windows makes of an n_samples clip (a short one is tiled to one window)."""
    return 1 + (max(n_samples, a.window_samples) - a.window_samples) // (a.hop_frames * a.hop_length)


class _Unavailable(Exception):
    """The memory's sources cannot all be read again: the reason, in words."""


def _sources(model: Model, memory: Memory, p: Params) -> tuple[list[Clip], list[Clip], list[FilmMaterial]]:
    """What the memory's entries were made from: its training clips (decoded) and the
    material of earlier corrections (checked to exist, not decoded). Raises _Unavailable
    when something is gone or the entries they make do not add up to the memory's."""
    info, a = memory.info, p.audio
    pos_paths, neg_paths = info.get("positive_clips"), info.get("negative_clips")
    if neg_paths is None:  # memories written before negative_clips was recorded: the training's history
        neg_paths = next((h["negative"] for h in reversed(model.meta.get("history", [])) if "negative" in h), None)
    if not pos_paths or neg_paths is None:
        raise _Unavailable("the memory does not record the clips it was made from")
    try:
        films = [FilmMaterial.from_dict(d) for d in info.get("films", [])]
    except (KeyError, TypeError, ValueError):
        raise _Unavailable("the memory's record of earlier corrections is damaged") from None
    missing = [f for f in [*pos_paths, *neg_paths, *(m.film for m in films)] if not Path(f).is_file()]
    if missing:
        raise _Unavailable(f"{len(missing)} of the files its memory was made from are gone (first: {missing[0]})")
    try:
        pos = load_clips(pos_paths, "positive", p)[0]
        neg = load_clips(neg_paths, "negative", p)[0] if neg_paths else []
    except SpeakertagError as e:
        raise _Unavailable(f"its training clips cannot be read: {e}") from None
    rate, copies = a.sample_rate_hz, 1 + p.train.augmented_memory_copies
    for role, clips, spans, stored in (
            ("target", pos, [s for m in films for s in m.positive_spans], memory.embeddings),
            ("negative", neg, [s for m in films for s in m.negative_spans], memory.negatives)):
        n = copies * (sum(_n_windows(len(c.samples), a) for c in clips)
                      + sum(_n_windows(round(e * rate) - round(s * rate), a) for s, e in spans))
        if n != len(stored):
            raise _Unavailable(f"the memory holds {len(stored)} {role} entries, its recorded sources make {n} "
                               "(a merged or edited memory)")
    return pos, neg, films


def _merge_film(earlier: list[FilmMaterial], new: FilmMaterial, corrected: Sequence[Span], guard_s: float,
                min_span_s: float) -> list[FilmMaterial]:
    """The film material after a correction of new.film: its latest labels replace its
    earlier corrected segments; its earlier false alarms stay where they do not touch the
    latest corrected segments (plus guard_s)."""
    same = [m for m in earlier if m.same_film(new)]
    guarded = [(s - guard_s, e + guard_s) for s, e in corrected]
    old_neg = subtract_spans([s for m in same for s in m.negative_spans], guarded)
    negatives = [(round(s, 3), round(e, 3)) for s, e in merge_spans([*old_neg, *new.negative_spans])
                 if e - s >= min_span_s]
    return [m for m in earlier if not m.same_film(new)] + [replace(new, negative_spans=tuple(negatives))]


# ---- refine ----

def refine(model: Model, memory: Memory, film: str | Path, corrected: Sequence[Span],
           options: RefineOptions = RefineOptions(), device: str | None = None,
           impostors: list[str | Path] | None = None,
           progress: Callable[[StepInfo], None] | None = None) -> tuple[Model, Memory, RefineReport]:
    """Learn from corrected labels of one film; returns the new model, memory and a report.

    corrected: the film's target segments as a person fixed them, (start_s, end_s) pairs;
    every detection outside them (by more than options.guard_s) is taken as a false alarm.
    impostors: clips of unheard voices for the threshold's calibration (as `train`).
    The inputs are not changed. Raises SpeakertagError for segments outside the film.
    """
    t0 = time.monotonic()
    check_pair(model, memory)
    film = Path(film)
    a, o = model.params.audio, options
    guard_s = a.window_s / 2 if o.guard_s is None else o.guard_s
    spans = merge_spans(corrected)
    if not spans:
        raise SpeakertagError("no corrected segments")
    for s, e in spans:
        if not (math.isfinite(s) and math.isfinite(e) and 0 <= s < e):
            raise SpeakertagError(f"bad corrected segment {s} - {e}: times must be seconds with 0 <= start < end")

    def check_inside(duration_s: float | None) -> None:
        if duration_s is not None and spans[-1][1] > duration_s + END_TOLERANCE_S:
            raise SpeakertagError(f"corrected segment {spans[-1][0]:.3f} - {spans[-1][1]:.3f} s is outside the film: "
                                  f"{film} is {duration_s:.1f} s long")

    check_inside(probe(film, o.stream).duration_s)  # before the long work, when the container says
    # What the model finds now.
    result = tag(film, Voice(model, memory), stream=o.stream)
    check_inside(result.duration_s)
    spans = [(s, min(e, result.duration_s)) for s, e in spans]
    track = result.tracks[0]
    detected = [(seg.start_s, seg.end_s) for seg in track.segments]
    notes = [f"corrected segment {s:.3f} - {e:.3f} s: shorter than {o.min_span_s:g} s, not used"
             for s, e in spans if e - s < o.min_span_s]
    positives = [(s, e) for s, e in spans if e - s >= o.min_span_s]
    if not positives:
        raise SpeakertagError(f"no corrected segment is {o.min_span_s:g} s or longer")
    false_alarms = [(s, e) for s, e in subtract_spans(detected, [(s - guard_s, e + guard_s) for s, e in spans])
                    if e - s >= o.min_span_s]
    # Within the cap, the segments the model missed most and the false alarms it scored highest first.
    cells = cell_scores(track.window_scores, a)

    def mean_cell_score(s: float, e: float) -> float:
        part = cells[int(s / a.hop_s):max(int(s / a.hop_s) + 1, math.ceil(e / a.hop_s))]
        return float(part.mean()) if len(part) else 0.0

    positives = cap_spans(positives, [(e - s) - overlap_s((s, e), detected) for s, e in positives], o.max_new_s)
    false_alarms = cap_spans(false_alarms, [mean_cell_score(s, e) for s, e in false_alarms], o.max_new_s)
    new = FilmMaterial(str(film.resolve()), o.stream,
                       tuple((round(s, 3), round(e, 3)) for s, e in positives),  # as recorded: a later cut
                       tuple((round(s, 3), round(e, 3)) for s, e in false_alarms))  # gets the same samples

    p = replace(model.params, train=replace(model.params.train, max_steps=max(o.steps, 1), seed=o.seed))
    imp_clips = load_clips(impostors, "impostor", p)[0] if impostors else []
    kept_why = "--steps 0" if o.steps == 0 else ""
    if not kept_why:
        try:
            pos_clips, neg_clips, films = _sources(model, memory, p)
        except _Unavailable as e:
            kept_why = str(e)
    if kept_why:
        films_info = [*memory.info.get("films", []), new.to_dict()]  # appended: old entries stay
        new_pos, new_neg = new.clips(a.sample_rate_hz)
        new_model, new_memory, calib = _keep_encoder(model, memory, new_pos, new_neg, imp_clips, p, device)
        steps = 0
    else:
        films = _merge_film(films, new, spans, guard_s, o.min_span_s)
        for m in films:  # one decoding pass per film; this film's new and earlier material together
            film_pos, film_neg = m.clips(a.sample_rate_hz)
            pos_clips, neg_clips = pos_clips + film_pos, neg_clips + film_neg
        new_model, new_memory, rep = train_on_clips(pos_clips, neg_clips, p, model, memory.name, progress, device,
                                                    imp_clips, validate=False)
        films_info = [m.to_dict() for m in films]
        calib, steps = rep.calibration, rep.steps
    positive_s = sum(e - s for s, e in new.positive_spans)
    false_alarm_s = sum(e - s for s, e in new.negative_spans)
    seconds = time.monotonic() - t0
    new_model.meta = {**model.meta, "history": [*model.meta.get("history", []), {
        "action": "refine", "film": new.film, "stream": o.stream,
        "positive_s": round(positive_s, 3), "false_alarm_s": round(false_alarm_s, 3),
        "encoder": "kept" if kept_why else "fine-tuned", "steps": steps,
        "threshold_before": memory.threshold, "threshold": new_memory.threshold,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": round(seconds, 1)}]}
    new_memory = replace(new_memory, info={**memory.info, **({"calibration": calib.__dict__} if calib else {}),
                                           "films": films_info})
    report = RefineReport(str(film), result.duration_s, positive_s, false_alarm_s, len(new.positive_spans),
                          len(new.negative_spans), tuple(detected), "kept" if kept_why else "fine-tuned", kept_why,
                          steps, memory.threshold, calib, seconds, tuple(notes))
    return new_model, new_memory, report


def _keep_encoder(model: Model, memory: Memory, new_pos: list[Clip], new_neg: list[Clip], imp_clips: list[Clip],
                  p: Params, device: str | None) -> tuple[Model, Memory, Calibration | None]:
    """The encoder stays: the new windows, embedded by it, join the memories (every entry
    still comes from this encoder), and the threshold is recalibrated on the film's material,
    leave-one-segment-out, against the false alarms and the impostor voices. With no
    negative material at all the old threshold stays."""
    rng = np.random.default_rng(p.train.seed)
    torch.manual_seed(p.train.seed)
    a, dev = p.audio, resolve_device(device)
    model = copy.deepcopy(model)
    model.encoder.to(dev)
    bg = Backgrounds.of([c.samples for c in new_neg], generated_backgrounds(a.sample_rate_hz, rng))

    def embed_windows(windows: np.ndarray) -> np.ndarray:
        return embed_features(model, features(windows, a, dev))

    pos_add = embed_windows(memory_windows(new_pos, bg, p, rng))
    neg_add = embed_windows(memory_windows(new_neg, bg, p, rng)) if new_neg else np.zeros((0, memory.negatives.shape[1]), np.float32)
    positives = np.concatenate([memory.embeddings, pos_add])
    negatives = np.concatenate([memory.negatives, neg_add])
    copies = 1 + p.train.augmented_memory_copies
    pos_ids = window_clip_ids(new_pos, a)
    neg_ids = window_clip_ids(new_neg, a) if new_neg else np.zeros(0, np.int64)
    # Old entries belong to no new segment (-1): a query never excludes them.
    pos_entry_ids = np.r_[np.full(len(memory.embeddings), -1), np.tile(pos_ids, copies)]
    neg_entry_ids = np.r_[np.full(len(memory.negatives), -1), np.tile(neg_ids, copies)]
    k, w = p.tag.top_k, p.tag.negative_weight

    def scores(queries: np.ndarray, own_pos: np.ndarray, own_neg: np.ndarray) -> np.ndarray:
        s = top_k_mean_excluding(queries, own_pos, positives, pos_entry_ids, k)
        if w > 0 and len(negatives):
            s = s - w * top_k_mean_excluding(queries, own_neg, negatives, neg_entry_ids, k)
        return s

    cal_pos = embed_windows(degrade(np.concatenate([clip_windows(new_pos, a)] * 2), bg, p, rng, 1.0))
    pos_scores = scores(cal_pos, np.tile(pos_ids, 2), np.full(len(cal_pos), -2))
    neg_scores = [np.zeros(0, np.float32)]
    if new_neg:
        cal_neg = embed_windows(degrade(clip_windows(new_neg, a), bg, p, rng, 0.7))
        neg_scores.append(scores(cal_neg, np.full(len(cal_neg), -2), neg_ids))
    if imp_clips:
        cal_imp = embed_windows(degrade(clip_windows(imp_clips, a), bg, p, rng, 0.7))
        neg_scores.append(scores(cal_imp, np.full(len(cal_imp), -2), np.full(len(cal_imp), -2)))
    neg_all = np.concatenate(neg_scores)
    calib = calibrate_threshold(pos_scores, neg_all, p.train.threshold_rule, p.train.target_precision) \
        if len(neg_all) else None
    model.encoder.cpu()
    new_memory = replace(memory, embeddings=positives.astype(np.float32), negatives=negatives.astype(np.float32),
                         threshold=calib.threshold if calib else memory.threshold)
    return model, new_memory, calib
