"""Spans of a recording: the label files that name them, the `FILM@SPANS` syntax of
`train --positive`, and interval arithmetic on (start_s, end_s) pairs. Pure: no decoding.

A positive source is a file or folder of clips, or spans of one recording:
`film.mkv@190-205,1022.5-1040` (seconds, or clock times `[hh:]mm:ss[.f]`:
`film.mkv@00:03:10-00:03:25`), or `film.mkv@spans.txt` (a label file, `read_labels`: Audacity
labels, CSV start,end[,label] or RTTM). A path that exists as written is always a file or
folder, never a film with spans: the text after the last `@` is spans only when the whole
does not exist.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import SpeakertagError

Span = tuple[float, float]  # (start_s, end_s)
END_TOLERANCE_S = 0.5  # a span may end this far past the decoded audio (container durations differ)


# ---- label files: Audacity labels, CSV start,end[,label], RTTM ----

class LabelFileError(SpeakertagError, ValueError):
    """A label file that cannot be read, in one line naming the file (and the line). A
    ValueError too, as evaluate's readers raise for every bad input."""


@dataclass(frozen=True)
class LabelRow:
    start_s: float
    end_s: float
    label: str | None  # None when the file has no label column or the cell is empty
    line: int


def _float(text: str) -> float | None:
    """float(text), nan and inf included; None when it is no number."""
    try:
        return float(text)
    except ValueError:
        return None


def read_text(path: str | Path) -> str:
    """A label (or hypothesis) file's text, UTF-8 with or without a byte-order mark."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise LabelFileError(f"{path}: not a UTF-8 text file ({e.reason})") from None


def label_row(path: str | Path, n: int, start_s: float, end_s: float, label: str | None,
              unit: str = "line") -> LabelRow:
    """The LabelRow of line n; LabelFileError naming path and line (or another `unit`: a
    JSON "segment") unless the times are finite seconds with 0 <= start < end."""
    if not (math.isfinite(start_s) and math.isfinite(end_s) and 0 <= start_s < end_s):
        raise LabelFileError(f"{path}: {unit} {n}: bad segment {start_s:g} - {end_s:g}: "
                             "times must be seconds with 0 <= start < end")
    return LabelRow(start_s, end_s, label, n)


def _rttm_rows(path: str | Path, text: str) -> list[LabelRow]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        f = line.split()
        if not f or f[0] != "SPEAKER":
            continue
        start, duration = (_float(f[3]), _float(f[4])) if len(f) >= 8 else (None, None)
        if start is None or duration is None:
            raise LabelFileError(f"{path}: line {n}: expected 'SPEAKER <file> <chan> <start> <dur> <NA> <NA> <name>'")
        rows.append(label_row(path, n, start, start + duration, f[7]))
    return rows


def parse_labels(text: str, path: str | Path = "labels") -> list[LabelRow]:
    """The rows of a label file's text (see read_labels); `path` names it in errors."""
    if text.split(None, 1)[:1] == ["SPEAKER"] or Path(path).suffix.lower() == ".rttm":
        return _rttm_rows(path, text)
    tabbed = any("\t" in line for line in text.splitlines())
    lines = [line.split("\t") for line in text.splitlines()] if tabbed else list(csv.reader(text.splitlines()))
    rows, label_col, header_seen = [], None, False
    for n, rec in enumerate(lines, 1):
        rec = [c.strip() for c in rec]
        if not any(rec) or rec[0].startswith(("#", "\\")):
            continue
        start, end = (_float(rec[0]), _float(rec[1])) if len(rec) > 1 else (None, None)
        if start is None or end is None:
            if rows or header_seen:
                raise LabelFileError(f"{path}: line {n}: expected start and end times in seconds, got {','.join(rec)!r}")
            header_seen = True  # a header: its label column, if it names one
            names = [c.lower() for c in rec]
            label_col = next((names.index(k) for k in ("label", "speaker", "name") if k in names), None)
            continue
        if tabbed or label_col is None:  # Audacity's third field; a CSV's first text after the times
            label = next((c for c in rec[2:] if c and (tabbed or _float(c) is None)), None)
        else:
            label = rec[label_col] if label_col < len(rec) and rec[label_col] else None
        rows.append(label_row(path, n, start, end, label))
    return rows


def read_labels(path: str | Path) -> list[LabelRow]:
    """The rows of a label file: the one reader of refine's corrections, train's spans files
    and evaluate's references and hypotheses (but JSON), with one set of rules:

    - UTF-8 text, with or without a byte-order mark;
    - RTTM when its first word is SPEAKER or its name ends in .rttm: the SPEAKER lines
      (start, duration, name), other line types skipped;
    - else Audacity labels (start<TAB>end<TAB>label) when a line holds a tab, else CSV
      start,end[,...]: blank lines, lines starting with '#' and Audacity's '\\' frequency
      lines skipped; a first row that is not two numbers is a header, and a column of it
      named label, speaker or name holds the labels; every other row starts with two numbers;
    - a row's label: RTTM's name, Audacity's third field, the CSV header's label column, else
      the CSV's first field after the times that is neither empty nor a number (speakertag's
      CSV is start,end,score[,label]); None when there is none;
    - every row's times are finite seconds with 0 <= start < end.

    Raises LabelFileError for a missing or bad file. A file without rows gives []."""
    if not Path(path).is_file():
        raise LabelFileError(f"no such labels file: {path}")
    return parse_labels(read_text(path), path)


def voice_rows(rows: Sequence[LabelRow], voice: str, path: str | Path = "labels") -> list[LabelRow]:
    """The rows of `voice` among a label file's rows, for refine and train: the rows labelled
    `voice` when any is; every row when the file has one label or none (a file for this voice
    alone). SpeakertagError for no rows at all, or none of `voice` among several labels."""
    if not rows:
        raise SpeakertagError(f"labels file {path} holds no segments")
    labels = sorted({r.label for r in rows if r.label is not None})
    if voice in labels:
        return [r for r in rows if r.label == voice]
    if len(labels) <= 1:
        return list(rows)
    raise SpeakertagError(f"labels file {path} has no rows for the voice {voice!r} "
                          f"(its labels: {', '.join(labels[:8])}{' ...' if len(labels) > 8 else ''})")


def corrected_spans(rows: Sequence[LabelRow], voice: str, path: str | Path = "labels") -> list[Span]:
    """The target segments among label rows (`voice_rows`), sorted, overlaps joined."""
    return merge_spans([(r.start_s, r.end_s) for r in voice_rows(rows, voice, path)])


def read_corrections(path: str | Path, voice: str) -> list[Span]:
    """read_labels + corrected_spans: the corrected target segments of `voice` in a label file."""
    return corrected_spans(read_labels(path), voice, path)


# ---- interval arithmetic on (start_s, end_s) pairs ----

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


# ---- the FILM@SPANS syntax of train --positive ----

_SECONDS = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_CLOCK = re.compile(r"(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)")  # [hh:]mm:ss[.f]
_SPAN_CHARS = re.compile(r"[\d:.,\s-]+")  # all a list of spans is made of; anything else names a spans file


def parse_time(text: str) -> float:
    """Seconds from seconds ("190", "1022.5") or a clock time [hh:]mm:ss[.f] ("03:10",
    "1:02:03.5"; minutes and seconds under 60 after a higher unit). ValueError otherwise."""
    t = text.strip()
    if _SECONDS.fullmatch(t):
        return float(t)
    m = _CLOCK.fullmatch(t)
    if not m or float(m[3]) >= 60 or (m[1] is not None and int(m[2]) >= 60):
        raise ValueError(f"{t!r} is not a time: seconds, or [hh:]mm:ss[.f]")
    return int(m[1] or 0) * 3600 + int(m[2]) * 60 + float(m[3])


def parse_spans(text: str) -> list[Span]:
    """"190-205,1022.5-1040" or "00:03:10-00:03:25" -> [(start_s, end_s), ...] in the order
    given, rounded to the millisecond. ValueError for a span that is not START-END or ends
    where or before it starts."""
    spans = []
    for part in text.split(","):
        bounds = part.split("-")
        if len(bounds) != 2:
            raise ValueError(f"{part.strip()!r} is not a span START-END")
        start, end = (round(parse_time(b), 3) for b in bounds)
        if end <= start:
            raise ValueError(f"span {part.strip()} ends before it starts")
        spans.append((start, end))
    return spans


def format_span(span: Span) -> str:
    return f"{span[0]:g}-{span[1]:g} s"


def check_disjoint(spans: Iterable[Span], where: str) -> list[Span]:
    """The spans sorted; SpeakertagError naming `where` when two overlap (touching is fine)."""
    ordered = sorted(spans)
    for a, b in zip(ordered, ordered[1:]):
        if b[0] < a[1]:
            raise SpeakertagError(f"{where}: spans {format_span(a)} and {format_span(b)} overlap")
    return ordered


@dataclass(frozen=True)
class FilmSpans:
    """Moments of one recording taken as clips."""
    film: Path
    spans: tuple[Span, ...]  # sorted, disjoint


def split_sources(items: Iterable[str | Path], voice: str, others: bool = False) -> tuple[list[Path], list[FilmSpans]]:
    """`train --positive` arguments -> (the files and folders among them, the spans asked
    of each recording: one FilmSpans per recording, in order of first mention, its spans
    from every argument that names it). voice: whose rows of a labels file (`voice_rows`);
    others: `--negative` arguments, whose labels files give every row not labelled `voice`.
    Raises SpeakertagError, one line, for a recording that is missing or a folder, spans
    that cannot be read, that end before they start or that overlap, a spans file that
    cannot be read."""
    files: list[Path] = []
    found: dict[Path, tuple[Path, list[Span]]] = {}
    for item in map(str, items):
        if Path(item).exists() or "@" not in item:
            files.append(Path(item))
            continue
        film_text, spec = item.rsplit("@", 1)
        film = Path(film_text)
        if not film.exists():
            raise SpeakertagError(f"no such file: {film} (in {item!r})")
        if film.is_dir():
            raise SpeakertagError(f"spans are moments of one recording, and {film} is a folder (in {item!r})")
        if _SPAN_CHARS.fullmatch(spec):
            try:
                spans = parse_spans(spec)
            except ValueError as e:
                raise SpeakertagError(f"{item!r}: {e}") from None
        elif Path(spec).is_file():
            rows = read_labels(spec)
            rows = [r for r in rows if r.label != voice] if others else voice_rows(rows, voice, spec)
            if not rows:
                raise SpeakertagError(f"labels file {spec} holds no segments but the voice {voice!r}'s")
            spans = [(round(r.start_s, 3), round(r.end_s, 3)) for r in rows]
        else:
            raise SpeakertagError(f"{item!r}: {spec!r} is neither spans START-END[,START-END...] (seconds or "
                                  "[hh:]mm:ss[.f]) nor a spans file")
        found.setdefault(film.resolve(), (film, []))[1].extend(spans)
    films = [FilmSpans(film, tuple(check_disjoint(spans, str(film)))) for film, spans in found.values()]
    return files, films
