"""Subtitle files (SRT, WebVTT) read, labelled with the speaking voice, and written back.

A file is kept as its lines, so that what speakertag does not change comes out byte for
byte as it went in (line endings, numbering, styling, NOTE blocks, cue settings). A cue is
a block of lines holding a timing line `start --> end`; its text is the lines after it.
Labelling puts `NAME: ` before a cue's first text line. Converting SRT to WebVTT or back
rewrites only the timing lines (and the numbering, header and WebVTT-only blocks).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import SpeakertagError, UsageError
from .io_utils import STDOUT
from .segments import Segment
from .writers import clock

SUFFIXES = {".srt": "srt", ".vtt": "vtt"}
_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})[,.](\d{1,3})"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(.*)$")


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    timing_line: int  # index in Subtitles.lines of the `start --> end` line
    text_lines: tuple[int, ...]  # indexes of its text lines (may be empty)


@dataclass(frozen=True)
class Subtitles:
    fmt: str  # "srt" or "vtt"
    lines: tuple[str, ...]  # the file's lines, each with its line ending
    cues: tuple[Cue, ...]
    bom: bool = False  # the file began with a UTF-8 byte-order mark


def format_of(path: Path) -> str | None:
    """"srt" or "vtt" by the file's suffix, else None."""
    return SUFFIXES.get(path.suffix.lower())


def output_format(subs: Path, out: Path) -> str:
    """The format of the labelled file `out`: by its suffix, or SUBS's for "-" (standard output).
    UsageError for a name of neither format."""
    fmt = format_of(subs) if str(out) == STDOUT else format_of(out)
    if fmt is None:
        raise UsageError(f"--out {out}: the name must end in .srt or .vtt")
    return fmt


def _seconds(h, m, s, ms) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def parse(text: str, fmt: str) -> Subtitles:
    """The lines and cues of subtitle text in format fmt ("srt" or "vtt")."""
    bom = text.startswith("\ufeff")
    lines = tuple(text.removeprefix("\ufeff").splitlines(keepends=True))
    if fmt == "vtt" and not (lines and lines[0].startswith("WEBVTT")):
        raise ValueError("a WebVTT file starts with the line WEBVTT")
    cues, i = [], 0
    while i < len(lines):
        m = _TIMING.match(lines[i])
        if not m:
            i += 1
            continue
        start, end = _seconds(*m.groups()[0:4]), _seconds(*m.groups()[4:8])
        j = i + 1
        while j < len(lines) and lines[j].strip():
            j += 1
        cues.append(Cue(start, max(start, end), i, tuple(range(i + 1, j))))
        i = j
    return Subtitles(fmt, lines, tuple(cues), bom)


def read_subtitles(path: Path) -> Subtitles:
    """Read an SRT or WebVTT file (by suffix; UTF-8). SpeakertagError for anything else."""
    fmt = format_of(path)
    if fmt is None:
        raise SpeakertagError(f"{path}: not a subtitle file name (.srt or .vtt)")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise SpeakertagError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SpeakertagError(f"cannot read {path}: not UTF-8 text") from None
    try:
        subs = parse(text, fmt)
    except ValueError as e:
        raise SpeakertagError(f"cannot read {path}: {e}") from None
    if not subs.cues:
        raise SpeakertagError(f"no subtitle cues in {path}")
    return subs


def speakers(cues: Sequence[Cue], segments: Sequence[Segment], min_share: float) -> list[str | None]:
    """The voice speaking in each cue: the label whose segments cover the largest share of the
    cue's time, when that share is at least min_share (0-1); None when no voice does. A cue
    of no duration counts as covered by the segment its start lies in."""
    out = []
    for cue in cues:
        duration = cue.end_s - cue.start_s
        covered: dict[str, float] = {}
        for s in segments:
            if duration > 0:
                share = max(0.0, min(s.end_s, cue.end_s) - max(s.start_s, cue.start_s)) / duration
            else:
                share = float(s.start_s <= cue.start_s < s.end_s)
            covered[s.label] = covered.get(s.label, 0.0) + share
        best = max(covered.items(), key=lambda kv: kv[1], default=(None, 0.0))
        out.append(best[0] if best[0] is not None and best[1] >= min_share - 1e-9 else None)
    return out


def render(subs: Subtitles, labels: Sequence[str | None], fmt: str) -> str:
    """The subtitle file with `NAME: ` (the label in capitals) before the text of each cue
    whose label is not None, in format fmt. In the format it was read in, every other line is
    kept as it was; converted, the timing lines are rewritten and the numbering (SRT) or the
    header (WebVTT) made anew."""
    lines = list(subs.lines)
    for cue, label in zip(subs.cues, labels):
        if label is not None and cue.text_lines:
            name = html.escape(label.upper(), quote=False) if fmt == "vtt" else label.upper()
            lines[cue.text_lines[0]] = f"{name}: {lines[cue.text_lines[0]]}"
    bom = "\ufeff" if subs.bom else ""
    if fmt == subs.fmt:
        return bom + "".join(lines)
    newline = "\r\n" if subs.lines and subs.lines[0].endswith("\r\n") else "\n"
    blocks = []
    for n, cue in enumerate(subs.cues, 1):
        sep = "," if fmt == "srt" else "."
        timing = f"{clock(cue.start_s, 3, sep)} --> {clock(cue.end_s, 3, sep)}"
        if fmt == "vtt":  # SRT text is kept; its settings-free timing line is all a cue needs
            head = [timing]
        else:  # WebVTT cue settings (position, align) have no SRT form
            head = [str(n), timing]
        text = [lines[i].rstrip("\r\n") for i in cue.text_lines]
        blocks.append(newline.join(head + text) + newline)
    header = "WEBVTT" + newline + newline if fmt == "vtt" else ""
    return bom + header + newline.join(blocks)


def write_labelled(subs: Subtitles, segments: Sequence[Segment], out: Path, fmt: str,
                   min_share: float | None = None) -> list[str | None]:
    """Write `subs` to `out` (atomically; "-": standard output) in format fmt, each cue that
    one voice's segments cover for at least min_share of its time (default
    params.SubtitleParams) labelled with its name; returns each cue's label or None."""
    from .io_utils import atomic_write_text
    from .params import SubtitleParams

    labels = speakers(subs.cues, segments, SubtitleParams().min_share if min_share is None else min_share)
    atomic_write_text(out, render(subs, labels, fmt))
    return labels
