"""Time-based scoring of target-speaker detection.

Makes the same decisions as the project's reference scorer (score.py of the dev data; a copy
is tests/fixtures/reference_score.py), vectorised with numpy: segment ends are rounded to a
`step_s` grid (round half to even, as Python's round), frames within +-collar_s of every
reference boundary are not scored, and on the scored frames
  TP = hyp & ref, FA = hyp & ~ref, MISS = ref & ~hyp,
  precision = TP/(TP+FA), recall = TP/(TP+MISS) (0 when the denominator is 0),
  F1 (0 when P+R is 0), detection_error = (MISS+FA)/(TP+MISS) (None when there is no target time).
Metrics keep full precision; `Metrics.rounded()` gives the 4-decimal numbers score.py prints.
"""
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import SpeakertagError
from .spans import LabelRow, Span, label_row, parse_labels, read_labels, read_text


@dataclass(frozen=True)
class Metrics:
    precision: float
    recall: float
    f1: float
    detection_error: float | None   # (miss_s + false_alarm_s) / target_scored_s; None without target time
    miss_s: float                   # scored target time not detected
    false_alarm_s: float            # scored non-target time detected
    tp_s: float                     # scored target time detected
    target_s: float                 # all reference target time, collars included
    target_scored_s: float          # reference target time outside the collars
    hyp_s: float                    # all detected time, collars included
    collar_s: float                 # half-width of the unscored zone around each reference boundary

    def rounded(self, ndigits: int = 4) -> "Metrics":
        """The same metrics with every number rounded, as score.py reports them."""
        return replace(self, **{k: round(v, ndigits) for k, v in asdict(self).items() if isinstance(v, float)})


def _metrics(tp_s: float, fa_s: float, miss_s: float, target_s: float, hyp_s: float, collar_s: float) -> Metrics:
    # same expressions, in the same order, as score.py's finish()
    p = tp_s / (tp_s + fa_s) if tp_s + fa_s > 0 else 0.0
    r = tp_s / (tp_s + miss_s) if tp_s + miss_s > 0 else 0.0
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    der = (miss_s + fa_s) / (tp_s + miss_s) if tp_s + miss_s > 0 else None
    return Metrics(precision=p, recall=r, f1=f1, detection_error=der, miss_s=miss_s, false_alarm_s=fa_s,
                   tp_s=tp_s, target_s=target_s, target_scored_s=tp_s + miss_s, hyp_s=hyp_s, collar_s=collar_s)


def _grid(times_s: np.ndarray, step_s: float) -> np.ndarray:
    """Nearest grid index of each time, ties to even (as int(round(t / step)) in score.py); int64."""
    return np.rint(times_s / step_s).astype(np.int64)


def _cover(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask, shape (n,), true on the union of index ranges [a, b) (ranges with b <= a are empty)."""
    keep = b > a
    a, b = np.clip(a[keep], 0, n), np.clip(b[keep], 0, n)
    edges = np.bincount(a, minlength=n + 1) - np.bincount(b, minlength=n + 1)
    return np.cumsum(edges[:n]) > 0


def _frames(reference: Sequence[Span], hypothesis: Sequence[Span], collar_s: float, step_s: float,
            end_s: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reference, hypothesis, scored) boolean masks on a `step_s` grid reaching at least end_s;
    scored is False within +-collar_s of every reference boundary (collar_s <= 0: all True)."""
    ref = np.asarray(reference, dtype=np.float64).reshape(-1, 2)
    hyp = np.asarray(hypothesis, dtype=np.float64).reshape(-1, 2)
    n = math.ceil(max(ref[:, 1].max(initial=0.0), hyp[:, 1].max(initial=0.0), end_s) / step_s) + 1
    r = _cover(_grid(ref[:, 0], step_s), _grid(ref[:, 1], step_s), n)
    h = _cover(_grid(hyp[:, 0], step_s), _grid(hyp[:, 1], step_s), n)
    scored = np.ones(n, dtype=bool)
    if collar_s > 0:
        c = round(collar_s / step_s)
        i = _grid(ref.ravel(), step_s)
        scored &= ~_cover(i - c, i + c, n)
    return r, h, scored


def score(reference: Sequence[Span], hypothesis: Sequence[Span], collar_s: float = 0.25,
          step_s: float = 0.01) -> Metrics:
    """Score hypothesis against reference spans (seconds) on a `step_s` grid, ignoring +-collar_s
    around every reference boundary (collar_s <= 0: score everything)."""
    if not step_s > 0:
        raise ValueError(f"step_s must be positive, got {step_s}")
    r, h, scored = _frames(reference, hypothesis, collar_s, step_s)
    tp = int(np.count_nonzero(scored & r & h))
    fa = int(np.count_nonzero(scored & ~r & h))
    miss = int(np.count_nonzero(scored & r & ~h))
    return _metrics(tp * step_s, fa * step_s, miss * step_s, int(np.count_nonzero(r)) * step_s,
                    int(np.count_nonzero(h)) * step_s, float(collar_s))


def pool(metrics: Sequence[Metrics]) -> Metrics:
    """Metrics over several files: seconds summed, ratios recomputed (score.py --pairs)."""
    if not metrics:
        raise ValueError("no metrics to pool")
    collars = {m.collar_s for m in metrics}
    if len(collars) > 1:
        raise ValueError(f"cannot pool metrics scored with different collars: {sorted(collars)}")

    def total(name: str) -> float:
        return sum(getattr(m, name) for m in metrics)

    return _metrics(total("tp_s"), total("false_alarm_s"), total("miss_s"), total("target_s"), total("hyp_s"),
                    metrics[0].collar_s)


def format_metrics(m: Metrics) -> str:
    """A few lines for people."""
    der = "n/a (no target time)" if m.detection_error is None else f"{m.detection_error:.3f}"
    return (f"precision        {m.precision:.3f}\n"
            f"recall           {m.recall:.3f}\n"
            f"F1               {m.f1:.3f}\n"
            f"detection error  {der}  (miss {m.miss_s:.1f} s + false alarm {m.false_alarm_s:.1f} s"
            f" / scored target {m.target_scored_s:.1f} s)\n"
            f"target time      {m.target_s:.1f} s ({m.target_scored_s:.1f} s scored, collar {m.collar_s:g} s)\n"
            f"detected time    {m.hyp_s:.1f} s")


# ---- error anatomy: which errors are edges, other voices, whole turns ----

@dataclass(frozen=True)
class Anatomy:
    """Where the scored errors of a hypothesis lie (seconds on the scoring grid, collars left out
    as in `score`). false_alarm_s = edge + elsewhere; miss_s = edge + whole."""
    metrics: Metrics                 # score() at collar_s
    exact: Metrics                   # score() at collar 0: edges counted to the frame
    edge_s: float                    # how near the target's speech a false alarm counts as an edge
    false_alarm_edge_s: float        # false alarm within edge_s of the reference's target speech
    false_alarm_elsewhere_s: float
    miss_edge_s: float               # missed inside reference segments the hypothesis found in part
    miss_whole_s: float              # missed inside reference segments it missed whole
    segments: int                    # reference segments (touching ones joined) with scored time
    segments_missed: int             # of them, missed whole
    # false alarm over each other speaker's speech, and "" for non-speech (None: the reference
    # names no other speaker); where several others speak at once, the frame is shared among them
    false_alarm_by_speaker: dict[str, float] | None = None

    def to_dict(self) -> dict:
        """JSON-able: the metrics' fields, and the rest under "anatomy"."""
        parts = asdict(self)
        return {**parts.pop("metrics"), "anatomy": parts}


def anatomy(reference: Sequence[Span], hypothesis: Sequence[Span],
            others: Sequence[tuple[float, float, str]] | None = None, collar_s: float = 0.25,
            step_s: float = 0.01, edge_s: float = 1.0) -> Anatomy:
    """Split the errors of `score(reference, hypothesis, collar_s, step_s)` into edges and the rest.

    others: (start_s, end_s, speaker) of every other voice in the reference (None: not known);
    with them the false alarms are also counted per other speaker and on non-speech."""
    m = score(reference, hypothesis, collar_s, step_s)
    ref = np.asarray(reference, dtype=np.float64).reshape(-1, 2)
    oth = [] if others is None else list(others)
    r, h, scored = _frames(reference, hypothesis, collar_s, step_s, max((e for _, e, _ in oth), default=0.0))
    n = len(r)
    ra, rb = _grid(ref[:, 0], step_s), _grid(ref[:, 1], step_s)
    fa = scored & ~r & h
    miss = scored & r & ~h
    e = round(edge_s / step_s)
    near = _cover(ra - e, rb + e, n)
    edge_miss = whole_miss = 0
    n_segments = n_missed = 0
    for a, b in _runs(r):
        if not scored[a:b].any():
            continue
        n_segments += 1
        missed = int(np.count_nonzero(miss[a:b]))
        if np.count_nonzero(scored[a:b] & h[a:b]):
            edge_miss += missed
        else:
            whole_miss += missed
            n_missed += 1
    by_speaker = None
    if others is not None:
        names = sorted({k for _, _, k in oth})
        covers = np.stack([_cover(_grid(np.array([s for s, _, k in oth if k == name]), step_s),
                                  _grid(np.array([t for _, t, k in oth if k == name]), step_s), n)
                           for name in names]) if names else np.zeros((0, n), bool)
        talking = covers.sum(0)
        share = np.where(fa & (talking > 0), 1.0 / np.maximum(talking, 1), 0.0)
        by_speaker = {name: float(share[covers[i]].sum()) * step_s for i, name in enumerate(names)}
        by_speaker = {k: v for k, v in sorted(by_speaker.items(), key=lambda kv: -kv[1]) if v > 0}
        by_speaker[""] = int(np.count_nonzero(fa & (talking == 0))) * step_s
    return Anatomy(m, score(reference, hypothesis, 0.0, step_s), edge_s,
                   int(np.count_nonzero(fa & near)) * step_s, int(np.count_nonzero(fa & ~near)) * step_s,
                   edge_miss * step_s, whole_miss * step_s, n_segments, n_missed, by_speaker)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs of a bool mask."""
    d = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def pool_anatomy(parts: Sequence[Anatomy]) -> Anatomy:
    """Anatomy over several files: seconds and counts summed, metrics pooled."""
    if not parts:
        raise ValueError("no anatomy to pool")
    speakers = None
    if all(p.false_alarm_by_speaker is not None for p in parts):
        speakers = {}
        for p in parts:
            for k, v in p.false_alarm_by_speaker.items():
                speakers[k] = speakers.get(k, 0.0) + v
    total = {f: sum(getattr(p, f) for p in parts) for f in
             ("false_alarm_edge_s", "false_alarm_elsewhere_s", "miss_edge_s", "miss_whole_s", "segments",
              "segments_missed")}
    return Anatomy(pool([p.metrics for p in parts]), pool([p.exact for p in parts]), parts[0].edge_s,
                   false_alarm_by_speaker=speakers, **total)


def format_anatomy(a: Anatomy) -> str:
    """A few lines for people: what kind of error each second is."""
    m = a.metrics
    lines = [f"false alarm      {m.false_alarm_s:.1f} s: {a.false_alarm_edge_s:.1f} s within {a.edge_s:g} s of the "
             f"target's speech (edges), {a.false_alarm_elsewhere_s:.1f} s elsewhere",
             f"missed           {m.miss_s:.1f} s: {a.miss_edge_s:.1f} s in turns found in part (edges), "
             f"{a.miss_whole_s:.1f} s in {a.segments_missed} of {a.segments} turns missed whole"]
    if a.false_alarm_by_speaker is not None:
        parts = [f"{k} {v:.1f} s" for k, v in a.false_alarm_by_speaker.items() if k]
        parts.append(f"non-speech {a.false_alarm_by_speaker.get('', 0.0):.1f} s")
        lines.append(f"false alarm on   {', '.join(parts)}")
    lines.append(f"F1 at collar 0   {a.exact.f1:.3f}")
    return "\n".join(lines)


# ---- reading reference and hypothesis files (spans.read_labels, and JSON) ----

def _spans_of(rows: Sequence[LabelRow], name: str | None, what: str, kind: str, hint: str) -> list[Span]:
    """The spans labelled `name`; every span when `name` is None and the rows carry at most one label."""
    names = sorted({r.label for r in rows if r.label is not None})
    if name is None:
        if len(names) > 1:
            raise ValueError(f"{what} has several {kind}s ({', '.join(names)}); {hint}")
        return [(r.start_s, r.end_s) for r in rows]
    if name not in names:
        raise ValueError(f"{kind} {name!r} not in {what} ({kind}s: {', '.join(names) or 'none'})")
    return [(r.start_s, r.end_s) for r in rows if r.label == name]


def read_reference(path: str | Path, speaker: str | None = None) -> list[Span]:
    """Target spans (seconds) from a label file (spans.read_labels: RTTM, CSV start,end[,speaker]
    or Audacity labels).

    `speaker` selects one speaker; it is required when the file names several.
    """
    return _spans_of(read_labels(path), speaker, f"reference {path}", "speaker", "choose one")


def read_others(path: str | Path, speaker: str | None = None) -> list[tuple[float, float, str]] | None:
    """(start_s, end_s, speaker) of every speaker but `speaker` in a reference that names
    several (RTTM, or CSV start,end,speaker); None when it names at most one."""
    rows = read_labels(path)
    if len({r.label for r in rows if r.label is not None}) < 2 or any(r.label is None for r in rows):
        return None
    return [(r.start_s, r.end_s, r.label) for r in rows if r.label != speaker]


def _json_rows(path: str | Path, text: str) -> list[LabelRow]:
    """The segments of a JSON hypothesis as label rows (`line`: the segment's index), under
    the rules of spans.read_labels."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from None
    items = doc.get("segments") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of segments or an object with a \"segments\" list")
    rows = []
    for n, it in enumerate(items):
        try:
            start, end = (it["start"], it["end"]) if isinstance(it, dict) else (it[0], it[1])
            start_s, end_s = float(start), float(end)
        except (KeyError, IndexError, TypeError, ValueError):
            raise ValueError(f"{path}: segment {n}: expected {{\"start\": s, \"end\": s}} or [start, end], "
                             f"got {it!r}") from None
        label = it.get("label") if isinstance(it, dict) else None
        rows.append(label_row(path, n, start_s, end_s, None if label is None else str(label), "segment"))
    return rows


def read_hypothesis(path: str | Path, voice: str | None = None) -> list[Span]:
    """Detected spans (seconds) from speakertag JSON ({"segments": [...]}), a JSON list of
    {"start", "end"} objects or [start, end] pairs, or a label file (spans.read_labels: CSV
    start,end[,score[,label]], RTTM, Audacity labels).

    `voice` selects the segments with that label; it is required when the file has several
    (speakertag tags several voices in one pass)."""
    text = read_text(path)
    rows = _json_rows(path, text) if text.lstrip().startswith(("[", "{")) else parse_labels(text, path)
    return _spans_of(rows, voice, f"hypothesis {path}", "voice", "choose one with --voice")


def evaluate_files(reference: Path, hypothesis: Path, speaker: str | None = None, voice: str | None = None,
                   collar_s: float = 0.25) -> Anatomy:
    """anatomy() of a hypothesis file against a reference file (read_reference, read_hypothesis,
    read_others); a missing file, or one that does not read, is a SpeakertagError."""
    for path in (reference, hypothesis):
        if not path.is_file():
            raise SpeakertagError(f"no such file: {path}")
    try:
        return anatomy(read_reference(reference, speaker), read_hypothesis(hypothesis, voice),
                       read_others(reference, speaker), collar_s)
    except ValueError as e:
        raise SpeakertagError(str(e)) from None
