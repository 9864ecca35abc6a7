"""Corrections: a person's fixed labels for one film -> a refined model, memory and threshold.

`refine` tags the film with the current model, takes the corrected target segments as new
positives and the stretches outside them that it detected (false alarms) or nearly detected
(near misses: the film's other voices most like the target) as new negatives, cuts
their audio from the film in one streaming pass, and then either

- fine-tunes the encoder for a few steps on the new material plus everything the memory
  was built from (the training clips, the material of earlier corrections), and rebuilds
  both memories from all of it with the new encoder; or
- when some of that earlier audio can no longer be read (or `steps` is 0), keeps the
  encoder: the stored embeddings cannot be re-embedded, and embeddings of an old encoder
  are meaningless to a new one. The new windows are embedded by the unchanged encoder and
  added to the memories.

Either way every stored embedding comes from the model it is saved with. The memory's
info lists its sources (`positive_clips`, `negative_clips`, and `films`: each corrected
film, or film whose moments `train` took as positives, with the spans taken from it), so that a
later refine can re-embed them again. A film
corrected again: its latest labels replace its earlier corrected segments, and its earlier
false alarms stay where the new labels do not contradict them (when the encoder is kept,
the new material is only added).

The threshold comes from the film itself: the new model tags it with the film's own material
left out of the memories (as it would a film it has not heard), and the threshold is set
where its segments agree best with the corrections (time-based F1, as `evaluate` scores).

The film is read three times, streaming, never whole: to tag it with the current model, to
cut the spans (a pass that holds only the spans' samples and stops after the last one), and
to tag it with the new model.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .audio import decode_blocks, probe
from .augment import generated_backgrounds
from .errors import SpeakertagError
from .evaluate import score
from .memory import Memory
from .model import Model, resolve_device
from .params import AudioParams, Params, TagParams
from .scoring import Calibration
from .segments import cell_scores, runs, to_segments
from .spans import (  # noqa: F401 - LabelRow, read_labels, corrected_spans: importable from here as before
    END_TOLERANCE_S, LabelRow, Span, corrected_spans, merge_spans, read_corrections, read_labels, subtract_spans)
from .tagging import TagOptions, TagResult, Voice, check_pair, tag
from .train import (
    Backgrounds,
    Clip,
    StepInfo,
    Windows,
    embed_chunks,
    load_clips,
    memory_chunks,
    memory_entry_clips,
    train_on_clips,
)


@dataclass(frozen=True)
class RefineOptions:
    steps: int = 30  # fine-tuning steps; 0 keeps the encoder and only updates memories and threshold
    seed: int = 0
    stream: int | None = None  # the film's audio track (0 = first); None: its default track
    channels: str = "auto"  # how a 5.1 or 7.1 track becomes mono (audio.CHANNEL_CHOICES)
    min_span_s: float = 0.5  # shorter corrected segments and false alarms are not used
    max_new_s: float = 600.0  # at most this much new positive and this much false-alarm audio
    guard_s: float | None = None  # detections this close to a corrected segment are not false alarms
    #                               (a window's edge effect); None: half a window
    near_miss_margin: float = 0.1  # stretches scoring within this below the threshold are negatives too:
    #                                a voice that came close becomes a false alarm once the threshold moves


@dataclass(frozen=True)
class FilmCalibration:
    threshold: float
    f1: float  # time-based, against the corrected segments, at the threshold
    precision: float
    recall: float
    best_f1_range: tuple[float, float]  # thresholds within 0.01 of the best F1


@dataclass(frozen=True)
class RefineReport:
    film: str
    duration_s: float
    positive_s: float  # corrected target seconds added as positives
    false_alarm_s: float  # seconds of false alarms and near misses added as negatives
    n_positive_spans: int
    n_false_alarm_spans: int  # false alarms and near misses
    detected_spans: tuple[Span, ...]  # what the model detected before the correction
    encoder: str  # "fine-tuned" or "kept"
    kept_why: str  # why the encoder was kept; "" when fine-tuned
    steps: int
    threshold_before: float
    calibration: Calibration | None  # as `train`'s, on film-like windows of every clip; None: encoder kept
    film_calibration: FilmCalibration | None  # on this film, its material left out of the memory: the
    #                                          threshold; None: the window calibration's is used
    seconds: float
    notes: tuple[str, ...]  # material not used, and why

    @property
    def detected_s(self) -> float:
        return sum(e - s for s, e in self.detected_spans)

    def summary(self, memory: Memory) -> str:
        """What refine learned and did, in lines for people; `memory`: the refined memory."""
        entries = f"{len(memory.embeddings)} target, {len(memory.negatives)} other entries"
        fc = self.film_calibration
        return "\n".join([
            f"{self.film}: the model detected {self.detected_s:.1f} s; learned from {self.positive_s:.1f} s of "
            f"corrected target speech ({self.n_positive_spans} segments) and {self.false_alarm_s:.1f} s of "
            f"false alarms and near misses ({self.n_false_alarm_spans} segments)",
            f"encoder fine-tuned for {self.steps} steps on that and the model's training clips; memories rebuilt "
            f"({entries})" if self.encoder == "fine-tuned" else
            f"encoder kept ({self.kept_why}); the new windows were added to the memories ({entries})",
            f"threshold {self.threshold_before:.3f} -> {memory.threshold:.3f}" + (
                f": where the film's segments agree best with the corrections when the memories leave out its own "
                f"material (F1 {fc.f1:.2f}, precision {fc.precision:.2f}, recall {fc.recall:.2f})" if fc else
                " (calibrated on film-like windows of every clip)" if self.calibration else " (kept)")
            + f"; {self.seconds:.1f} s in all"])


# ---- spans ----

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
    channels: str = "average"  # how its 5.1 or 7.1 was heard (audio.CHANNEL_CHOICES); before there was a
    #                            choice, always the average

    def to_dict(self) -> dict:
        return {"film": self.film, "stream": self.stream, "channels": self.channels,
                "positive_spans": [list(s) for s in self.positive_spans],
                "negative_spans": [list(s) for s in self.negative_spans]}

    @classmethod
    def from_dict(cls, d: dict) -> FilmMaterial:
        return cls(str(d["film"]), d.get("stream"), tuple((float(s), float(e)) for s, e in d["positive_spans"]),
                   tuple((float(s), float(e)) for s, e in d["negative_spans"]), str(d.get("channels", "average")))

    def same_film(self, other: FilmMaterial) -> bool:
        return (self.film, self.stream) == (other.film, other.stream)

    def clips(self, sample_rate_hz: int) -> tuple[list[Clip], list[Clip]]:
        """Positive and negative clips, cut from the film in one pass."""
        spans = [*self.positive_spans, *self.negative_spans]
        samples = cut_spans(decode_blocks(self.film, sample_rate_hz, self.stream, channels=self.channels), spans, sample_rate_hz)
        clips = [Clip(f"{self.film}@{s:.3f}-{e:.3f}", x) for (s, e), x in zip(spans, samples)]
        return clips[:len(self.positive_spans)], clips[len(self.positive_spans):]


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
    try:
        films = [FilmMaterial.from_dict(d) for d in info.get("films", [])]
    except (KeyError, TypeError, ValueError):
        raise _Unavailable("the memory's record of earlier corrections is damaged") from None
    # A voice trained on moments of a film alone records no positive clips, only that film.
    if (not pos_paths and not any(m.positive_spans for m in films)) or pos_paths is None or neg_paths is None:
        raise _Unavailable("the memory does not record the clips it was made from")
    missing = [f for f in [*pos_paths, *neg_paths, *(m.film for m in films)] if not Path(f).is_file()]
    if missing:
        raise _Unavailable(f"{len(missing)} of the files its memory was made from are gone (first: {missing[0]})")
    try:
        pos = load_clips(pos_paths, "positive", p)[0] if pos_paths else []
        neg = load_clips(neg_paths, "negative", p)[0] if neg_paths else []
    except SpeakertagError as e:
        raise _Unavailable(f"its training clips cannot be read: {e}") from None
    rate = a.sample_rate_hz
    for role, clips, spans, stored in (
            ("target", pos, [s for m in films for s in m.positive_spans], memory.embeddings),
            ("negative", neg, [s for m in films for s in m.negative_spans], memory.negatives)):
        n = len(memory_entry_clips([len(c.samples) for c in clips] + [round(e * rate) - round(s * rate)
                                                                      for s, e in spans], p))
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
    every detection outside them (by more than options.guard_s) is taken as a false alarm,
    every stretch scoring within options.near_miss_margin of the threshold as a near miss.
    impostors: clips of unheard voices for the threshold's calibration (as `train`).
    The inputs are not changed. Raises SpeakertagError for segments outside the film.
    """
    t0 = time.monotonic()
    check_pair(model, memory)
    film = Path(film)
    a, o = model.params.audio, options
    guard_s = a.window_s / 2 if o.guard_s is None else o.guard_s
    spans = _checked(corrected)
    _check_inside(spans, film, probe(film, o.stream).duration_s)  # before the long work, when the container says
    # What the model finds now.
    result = tag(film, Voice(model, memory), TagOptions(stream=o.stream, channels=o.channels))
    _check_inside(spans, film, result.duration_s)
    spans = [(s, min(e, result.duration_s)) for s, e in spans if s < result.duration_s]
    detected = [(seg.start_s, seg.end_s) for seg in result.tracks[0].segments]
    new, notes = new_material(film, result, spans, o, a, guard_s)

    # The corrections' fine-tuning is kept whole (fine_tuned_share 1): the model it starts from
    # is already the user's target model, not the generic base.
    p = replace(model.params, train=replace(model.params.train, max_steps=max(o.steps, 1), seed=o.seed,
                                            fine_tuned_share=1.0))
    kept_why = "steps 0: no fine-tuning asked for" if o.steps == 0 else ""
    if not kept_why:
        try:
            sources = _sources(model, memory, p)
        except _Unavailable as e:
            kept_why = str(e)
    if kept_why:
        done = _keep_encoder(model, memory, new, p, device)
    else:
        done = _fine_tune(model, memory, new, sources, spans, guard_s, o.min_span_s, p, impostors, progress, device)
    # The threshold: the film is the best evidence of how real films score. The new model tags
    # it with the film's own material left out of the memories (as it would a film it has not
    # heard), and the threshold is where its segments agree best with the corrections. When
    # the film cannot tell (no agreement at any threshold), the training's window calibration
    # stays (the old threshold, when the encoder was kept).
    film_calib = _film_calibration(film, done, spans, o, p)
    new_memory = done.memory if film_calib is None else replace(done.memory, threshold=film_calib.threshold)
    positive_s = sum(e - s for s, e in new.positive_spans)
    false_alarm_s = sum(e - s for s, e in new.negative_spans)
    seconds = time.monotonic() - t0
    new_model = done.model
    new_model.meta = {**model.meta, "history": [*model.meta.get("history", []), {
        "action": "refine", "film": new.film, "stream": o.stream, "channels": o.channels,
        "positive_s": round(positive_s, 3), "false_alarm_s": round(false_alarm_s, 3),
        "encoder": "kept" if kept_why else "fine-tuned", "steps": done.steps,
        "threshold_before": memory.threshold, "threshold": new_memory.threshold,
        "threshold_from": "film" if film_calib else "windows",
        "film_f1": round(film_calib.f1, 4) if film_calib else None,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": round(seconds, 1)}]}
    calib = done.calibration
    new_memory = replace(new_memory, info={**memory.info, **({"calibration": calib.__dict__} if calib else {}),
                                           "film_calibration": ({"film": new.film, **asdict(film_calib)}
                                                                if film_calib else None),
                                           "films": done.films})
    report = RefineReport(str(film), result.duration_s, positive_s, false_alarm_s, len(new.positive_spans),
                          len(new.negative_spans), tuple(detected), "kept" if kept_why else "fine-tuned", kept_why,
                          done.steps, memory.threshold, calib, film_calib, seconds, tuple(notes))
    return new_model, new_memory, report


def _checked(corrected: Sequence[Span]) -> list[Span]:
    """The corrected segments sorted and joined; SpeakertagError for none, or one that is not
    finite seconds with 0 <= start < end."""
    spans = merge_spans(corrected)
    if not spans:
        raise SpeakertagError("no corrected segments")
    for s, e in spans:
        if not (math.isfinite(s) and math.isfinite(e) and 0 <= s < e):
            raise SpeakertagError(f"bad corrected segment {s} - {e}: times must be seconds with 0 <= start < end")
    return spans


def _check_inside(spans: Sequence[Span], film: Path, duration_s: float | None) -> None:
    """SpeakertagError when the last corrected segment ends past the film (duration_s None: not known)."""
    if duration_s is not None and spans[-1][1] > duration_s + END_TOLERANCE_S:
        raise SpeakertagError(f"corrected segment {spans[-1][0]:.3f} - {spans[-1][1]:.3f} s is outside the film: "
                              f"{film} is {duration_s:.1f} s long")


def new_material(film: Path, result: TagResult, spans: Sequence[Span], o: RefineOptions, a: AudioParams,
                 guard_s: float) -> tuple[FilmMaterial, list[str]]:
    """What a correction adds, from the film tagged by the current model (result) and its
    corrected segments (spans, within the film): the corrected segments as positives; as
    negatives, the detections and the cells scoring within o.near_miss_margin of the
    threshold, more than guard_s away from the corrected segments; each at least
    o.min_span_s long and at most o.max_new_s in all; and notes on what was left out."""
    track = result.tracks[0]
    detected = [(seg.start_s, seg.end_s) for seg in track.segments]
    notes = [f"corrected segment {s:.3f} - {e:.3f} s: shorter than {o.min_span_s:g} s, not used"
             for s, e in spans if e - s < o.min_span_s]
    positives = [(s, e) for s, e in spans if e - s >= o.min_span_s]
    if not positives:
        raise SpeakertagError(f"no corrected segment is {o.min_span_s:g} s or longer")
    cells = cell_scores(track.window_scores, a)
    near = [(i * a.hop_s, min(j * a.hop_s, result.duration_s))
            for i, j in runs(cells >= track.threshold - o.near_miss_margin)]
    false_alarms = [(s, e) for s, e in subtract_spans(merge_spans([*detected, *near]),
                                                      [(s - guard_s, e + guard_s) for s, e in spans])
                    if e - s >= o.min_span_s]
    # Within the cap, the segments the model missed most and the false alarms it scored highest first.

    def mean_cell_score(s: float, e: float) -> float:
        part = cells[int(s / a.hop_s):max(int(s / a.hop_s) + 1, math.ceil(e / a.hop_s))]
        return float(part.mean()) if len(part) else 0.0

    for what, found in (("corrected target speech", positives), ("false alarms and near misses", false_alarms)):
        if sum(e - s for s, e in found) > o.max_new_s:
            notes.append(f"{what}: {sum(e - s for s, e in found):.0f} s, the {o.max_new_s:.0f} s "
                         f"{'the model missed most' if found is positives else 'scored highest'} are used")
    positives = cap_spans(positives, [(e - s) - overlap_s((s, e), detected) for s, e in positives], o.max_new_s)
    false_alarms = cap_spans(false_alarms, [mean_cell_score(s, e) for s, e in false_alarms], o.max_new_s)
    new = FilmMaterial(str(film.resolve()), o.stream,
                       tuple((round(s, 3), round(e, 3)) for s, e in positives),  # as recorded: a later cut
                       tuple((round(s, 3), round(e, 3)) for s, e in false_alarms),  # gets the same samples
                       o.channels)
    return new, notes


@dataclass(frozen=True)
class _Refined:
    """What either way of refining (encoder kept or fine-tuned) gives."""
    model: Model
    memory: Memory  # its threshold the training's (or the old one, encoder kept)
    calibration: Calibration | None  # the training's window calibration; None: encoder kept
    steps: int
    films: list[dict]  # the memory info's "films"
    film_entries: tuple[np.ndarray, np.ndarray]  # (positive, negative) bool masks: the memory's entries of this film


def _keep_encoder(model: Model, memory: Memory, new: FilmMaterial, p: Params, device: str | None) -> _Refined:
    """The encoder kept: the new material's windows embedded by it and added to the memories."""
    films = [*memory.info.get("films", []), new.to_dict()]  # appended: old entries stay
    new_pos, new_neg = new.clips(p.audio.sample_rate_hz)
    new_memory = _add_to_memory(model, memory, new_pos, new_neg, p, device)
    # this film's entries: the ones just added
    return _Refined(replace(model), new_memory, None, 0, films,
                    (np.arange(len(new_memory.embeddings)) >= len(memory.embeddings),
                     np.arange(len(new_memory.negatives)) >= len(memory.negatives)))


def _fine_tune(model: Model, memory: Memory, new: FilmMaterial,
               sources: tuple[list[Clip], list[Clip], list[FilmMaterial]], spans: Sequence[Span], guard_s: float,
               min_span_s: float, p: Params, impostors: list[str | Path] | None,
               progress: Callable[[StepInfo], None] | None, device: str | None) -> _Refined:
    """The encoder fine-tuned on the memory's sources (_sources) and every corrected film's
    material, this film's merged with its earlier corrections (_merge_film); memories rebuilt."""
    pos_clips, neg_clips, films = sources
    films = _merge_film(films, new, spans, guard_s, min_span_s)
    # One decoding pass per film; this film's new and earlier material together, last.
    film_clips = [m.clips(p.audio.sample_rate_hz) for m in films]
    pos_clips = pos_clips + [c for film_pos_clips, _ in film_clips for c in film_pos_clips]
    neg_clips = neg_clips + [c for _, film_neg_clips in film_clips for c in film_neg_clips]
    imp_clips = load_clips(impostors, "impostor", p)[0] if impostors else []
    new_model, new_memory, rep = train_on_clips(pos_clips, neg_clips, p, model, memory.name, progress, device,
                                                imp_clips, validate=False)
    # this film's entries: those of its clips, the last ones (_merge_film puts it last)
    this_pos, this_neg = film_clips[-1]
    return _Refined(new_model, new_memory, rep.calibration, rep.steps, [m.to_dict() for m in films],
                    (memory_entry_clips([len(c.samples) for c in pos_clips], p) >= len(pos_clips) - len(this_pos),
                     memory_entry_clips([len(c.samples) for c in neg_clips], p) >= len(neg_clips) - len(this_neg)))


def _film_calibration(film: Path, done: _Refined, spans: Sequence[Span], o: RefineOptions, p: Params
                      ) -> FilmCalibration | None:
    """film_threshold of the film tagged by the refined model with the film's own entries
    left out of its memories; None when that leaves no entry or agrees nowhere (F1 0)."""
    film_pos, film_neg = done.film_entries
    if not film_pos.any() or film_pos.all():
        return None
    held_out = replace(done.memory, embeddings=done.memory.embeddings[~film_pos],
                       negatives=done.memory.negatives[~film_neg])
    calib = film_threshold(tag(film, Voice(done.model, held_out), TagOptions(stream=o.stream, channels=o.channels)),
                           spans, p.audio, p.tag)
    return calib if calib.f1 > 0 else None


def film_threshold(result: TagResult, corrected: Sequence[Span], a: AudioParams, tp: TagParams,
                   collar_s: float = 0.25) -> FilmCalibration:
    """The threshold that makes the film's segments (its first voice's) agree best
    (time-based F1, as `evaluate`) with its corrected segments: the middle of the thresholds
    within 0.01 of the best F1, robust to small score shifts."""
    track = result.tracks[0]
    cells = cell_scores(track.window_scores, a)
    candidates = np.unique(np.quantile(cells, np.linspace(0.0, 1.0, 201)))
    metrics = [score(corrected, [(g.start_s, g.end_s) for g in to_segments(
        track.window_scores, float(t), a, tp, duration_s=result.duration_s, cell_db=result.cell_db,
        edge_threshold=track.edge_threshold)], collar_s) for t in candidates]
    f1 = np.array([m.f1 for m in metrics])
    near = np.flatnonzero(f1 >= f1.max() - 0.01)
    # the middle in score, not in count: the candidates are quantiles, dense where the other voices score
    middle = (candidates[near].min() + candidates[near].max()) / 2
    i = int(near[np.argmin(np.abs(candidates[near] - middle))])
    return FilmCalibration(float(candidates[i]), float(f1[i]), metrics[i].precision, metrics[i].recall,
                           (float(candidates[near].min()), float(candidates[near].max())))


def _add_to_memory(model: Model, memory: Memory, new_pos: list[Clip], new_neg: list[Clip], p: Params,
                   device: str | None) -> Memory:
    """The encoder stays: the new clips' windows (clean and film-like copies, as `train` stores
    them), embedded by it, join the memories, so that every entry still comes from it."""
    rng = np.random.default_rng(p.train.seed)
    a, dev = p.audio, resolve_device(device)
    bg = Backgrounds.of([c.samples for c in new_neg], generated_backgrounds(a.sample_rate_hz, rng))
    model = copy.deepcopy(model)
    model.encoder.to(dev)

    def embedded(clips: list[Clip]) -> np.ndarray:
        if not clips:
            return np.zeros((0, p.encoder.embedding_dim), np.float32)
        return embed_chunks(model, memory_chunks(Windows.of(clips, a), bg, p, rng), dev)

    return replace(memory, embeddings=np.concatenate([memory.embeddings, embedded(new_pos)]),
                   negatives=np.concatenate([memory.negatives, embedded(new_neg)]))
