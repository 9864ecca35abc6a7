"""Render segments as text in one of several formats, chosen by name (whisper utils.get_writer).

`render` returns the whole file content; writing it (atomically) happens elsewhere.
"""
import csv
import html
import io
import json
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from speakertag.io_utils import STDOUT, GrowingOutput, atomic_write_text
from speakertag.segments import Segment

SUFFIX: dict[str, str] = {
    "text": ".txt",
    "json": ".json",
    "csv": ".csv",
    "rttm": ".rttm",
    "srt": ".srt",
    "vtt": ".vtt",
    "audacity": ".labels.txt",
}
FORMATS: tuple[str, ...] = tuple(SUFFIX)
APPENDABLE: tuple[str, ...] = ("text", "csv", "rttm", "audacity")  # a live run adds segments to these as they come


def check_voice_name(name: str) -> str:
    """The name, if every format can carry it as a label: one line, no tab or other control
    character (an Audacity label or an SRT cue would split), not empty. Raises ValueError."""
    if not name.strip() or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"a voice's name must be one line of printable text without tabs, not {name!r}")
    return name


def format_of(path: Path) -> str | None:
    """The format an output file's name asks for (film.csv -> "csv", film.labels.txt ->
    "audacity", film.txt -> "text"), or None for a name no format writes."""
    name = path.name.lower()
    for fmt, suffix in sorted(SUFFIX.items(), key=lambda kv: -len(kv[1])):  # .labels.txt before .txt
        if name.endswith(suffix):
            return fmt
    return None


def clock(seconds: float, digits: int = 0, sep: str = ".", hours: str = "padded") -> str:
    """Clock time with `digits` fraction digits after `sep`, rounded once (59.96 s to 0.1 s
    is 00:01:00.0, never 00:00:60.0). hours: "padded" 00:03:06.5, "shown" 0:03:06, "if any"
    03:06.5 and 1:06:40.0, "in minutes" 75:00."""
    units = 10**digits
    h, rest = divmod(round(seconds * units), 3600 * units)
    m, rest = divmod(rest, 60 * units)
    s, frac = divmod(rest, units)
    tail = f"{s:02d}{sep}{frac:0{digits}d}" if digits else f"{s:02d}"
    if hours == "in minutes":
        return f"{h * 60 + m:02d}:{tail}"
    if hours == "if any" and not h:
        return f"{m:02d}:{tail}"
    return f"{h:02d}:{m:02d}:{tail}" if hours == "padded" else f"{h}:{m:02d}:{tail}"


def _clock(seconds: float, digits: int, sep: str) -> str:
    """clock() of a segment's time, which is never negative."""
    if seconds < 0:
        raise ValueError(f"negative time: {seconds} s")
    return clock(seconds, digits, sep)


def format_timestamp(seconds: float) -> str:
    """Time for people, to 0.1 s: 186.5 -> "00:03:06.5"."""
    return _clock(seconds, 1, ".")


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _several_labels(segments: Sequence[Segment]) -> bool:
    return len({s.label for s in segments}) > 1


def _text(segments: Sequence[Segment], with_label: bool) -> str:
    return "".join(
        f"{format_timestamp(s.start_s)} - {format_timestamp(s.end_s)}  score {s.score:.2f}"
        + (f"  {s.label}" if with_label else "") + "\n"
        for s in segments)


def _json(segments: Sequence[Segment], input_path: str, voices: Sequence[dict],
          gaps: Sequence[tuple[float, float]]) -> str:
    doc = {
        "input": input_path,
        "voices": list(voices),
        "segments": [{"start": round(s.start_s, 3), "end": round(s.end_s, 3), "score": round(s.score, 4),
                      "label": s.label} for s in segments],
    }
    if gaps:
        doc["gaps"] = [[round(start_s, 3), round(end_s, 3)] for start_s, end_s in gaps]
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _csv(segments: Sequence[Segment], with_label: bool, header: bool) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    if header:
        w.writerow(["start", "end", "score"] + (["label"] if with_label else []))
    for s in segments:
        w.writerow([f"{s.start_s:.3f}", f"{s.end_s:.3f}", f"{s.score:.4f}"] + ([s.label] if with_label else []))
    return out.getvalue()


def _rttm(segments: Sequence[Segment], input_path: str) -> str:
    # RTTM fields are whitespace-separated, so whitespace in names becomes "_"
    file_id = re.sub(r"\s", "_", Path(input_path).stem)
    lines = []
    for s in segments:
        start_ms, end_ms = _ms(s.start_s), _ms(s.end_s)
        label = re.sub(r"\s", "_", s.label)
        lines.append(f"SPEAKER {file_id} 1 {start_ms / 1000:.3f} {(end_ms - start_ms) / 1000:.3f} "
                     f"<NA> <NA> {label} <NA> <NA>\n")
    return "".join(lines)


def _srt(segments: Sequence[Segment]) -> str:
    return "".join(
        f"{i}\n{_clock(s.start_s, 3, ',')} --> {_clock(s.end_s, 3, ',')}\n{s.label} ({s.score:.2f})\n\n"
        for i, s in enumerate(segments, 1))


def _vtt(segments: Sequence[Segment]) -> str:
    # cue text is HTML-like: "&" and "<" in a label must be escaped
    return "WEBVTT\n\n" + "".join(
        f"{_clock(s.start_s, 3, '.')} --> {_clock(s.end_s, 3, '.')}\n"
        f"{html.escape(s.label, quote=False)} ({s.score:.2f})\n\n"
        for s in segments)


def _audacity(segments: Sequence[Segment]) -> str:
    return "".join(f"{s.start_s:.6f}\t{s.end_s:.6f}\t{s.label}\n" for s in segments)


def render(fmt: str, segments: Sequence[Segment], *, input_path: str, voices: Sequence[dict] = (),
           with_label: bool | None = None, header: bool = True, gaps: Sequence[tuple[float, float]] = ()) -> str:
    """The whole output file for `segments` (times in seconds) in format `fmt`, one of FORMATS.
    voices: what the JSON header says of each voice, e.g. {"name", "model", "threshold"}.
    gaps: (start_s, end_s) stretches of the film without audio (tagging.TagResult.gaps): JSON
    lists them as "gaps" when there are any.
    with_label: whether text and CSV name each segment's voice (None: when several labels
    occur); header: False leaves out the CSV header (a live run's later segments)."""
    with_label = _several_labels(segments) if with_label is None else with_label
    writers = {
        "text": lambda: _text(segments, with_label),
        "json": lambda: _json(segments, input_path, voices, gaps),
        "csv": lambda: _csv(segments, with_label, header),
        "rttm": lambda: _rttm(segments, input_path),
        "srt": lambda: _srt(segments),
        "vtt": lambda: _vtt(segments),
        "audacity": lambda: _audacity(segments),
    }
    if fmt not in writers:
        raise ValueError(f"unknown output format {fmt!r}; choose from: {', '.join(FORMATS)}")
    return writers[fmt]()


SCORE_FORMATS: dict[str, str] = {".csv": "csv", ".npz": "npz"}  # --scores FILE: format by suffix


def voice_entries(voices: Iterable[tuple[str, str, float]]) -> list[dict]:
    """What the JSON header says of each voice: (name, model folder, threshold) -> {"name", "model", "threshold"}."""
    return [{"name": name, "model": folder, "threshold": round(threshold, 4)} for name, folder, threshold in voices]


class LiveOutput:
    """A live run's output, written segment by segment. The formats that can grow (APPENDABLE)
    get each segment as it closes: on standard output at once, or in `out` through
    io_utils.GrowingOutput, by design not atomically (a new file grows in place, so that a
    reader can follow it; an existing one is replaced only at commit(), and kept as it was by
    discard()). JSON, SRT and WebVTT are rendered whole at commit() and written atomically.
    out None: standard output."""

    def __init__(self, fmt: str, out: Path | None, input_path: str, several: bool):
        self.fmt, self.out, self.input_path, self.several = fmt, out, input_path, several
        self.appendable = fmt in APPENDABLE
        self.sink = GrowingOutput(out) if out is not None and self.appendable else None
        self.found: list[Segment] = []
        if fmt == "csv" and out is None:  # the header first, the rows as they come
            self._write(self._csv_header())

    def _csv_header(self) -> str:
        return render(self.fmt, [], input_path="", with_label=self.several)

    def _write(self, text: str) -> None:
        if self.sink is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        if self.sink.file is None and self.fmt == "csv":  # the header first, the rows as they come
            self.sink.write(self._csv_header())
        self.sink.write(text)

    def add(self, segments: Sequence[Segment]) -> None:
        """Segments that have closed, by start time."""
        if self.appendable and segments:
            self._write(render(self.fmt, segments, input_path=self.input_path, with_label=self.several,
                               header=False))
        self.found.extend(segments)

    def commit(self, voices: Sequence[dict], gaps: Sequence[tuple[float, float]]) -> None:
        """The run has ended well: the file is complete (one that found nothing is written too)."""
        if self.sink is not None:
            self._write("")
            self.sink.commit()
        if not self.appendable:
            atomic_write_text(self.out or STDOUT, render(self.fmt, self.found, input_path=self.input_path,
                                                         voices=voices, gaps=gaps))

    def keep(self) -> None:
        """Stopped at once (a second Ctrl-C): the segments already out are kept."""
        if self.sink is not None:
            self.sink.commit()

    def discard(self) -> None:
        """The run failed: what it wrote is taken back, an older file stays as it was."""
        if self.sink is not None:
            self.sink.discard()


def scores_format_of(path: Path) -> str | None:
    """"csv" or "npz" for a --scores file name, None for any other suffix."""
    return SCORE_FORMATS.get(path.suffix.lower())


def render_scores(fmt: str, curves: Sequence[tuple[str, float, np.ndarray, np.ndarray]]) -> bytes:
    """The score curves of one film as a file: fmt "csv" or "npz".

    curves: one (voice name, threshold, edges_s (n + 1,), scores (n,)) per voice, all with the
    same cells; cell i spans [edges_s[i], edges_s[i + 1]) s (report.track_cells).
    CSV: a header `time_s,voice,score,threshold`, then one row per cell and voice, by time
    (time_s: the cell's start). npz: time_s (n,) cell starts and end_s (n,) ends, voices
    (n_voices,) names, scores (n_voices, n) float32, thresholds (n_voices,) float32.
    """
    if fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["time_s", "voice", "score", "threshold"])
        if curves:
            edges_s = curves[0][2]
            for i in range(len(curves[0][3])):
                for name, threshold, _, scores in curves:
                    w.writerow([f"{edges_s[i]:.3f}", name, f"{scores[i]:.6f}", f"{threshold:.6f}"])
        return out.getvalue().encode("utf-8")
    if fmt == "npz":
        edges_s = curves[0][2] if curves else np.zeros(1)
        buf = io.BytesIO()
        np.savez(buf, time_s=np.asarray(edges_s[:-1], np.float64), end_s=np.asarray(edges_s[1:], np.float64),
                 voices=np.array([c[0] for c in curves], dtype=str),
                 scores=np.array([c[3] for c in curves], np.float32).reshape(len(curves), -1),
                 thresholds=np.array([c[1] for c in curves], np.float32))
        return buf.getvalue()
    raise ValueError(f"unknown scores format {fmt!r}; choose from: {', '.join(SCORE_FORMATS.values())}")
