"""Window scores -> time segments where the voice speaks.

Windows overlap (a 2 s window every 0.5 s), so every 0.5 s cell of the input is covered
by several windows. A cell's score is the mean score of the windows covering it: a cell
is only marked when most of the windows around it agree. That finds the segments' cores
reliably but cuts their edges short: a window half over the target and half over another
voice or music scores low, so the cells near a turn's first and last words average in
low windows (on the development films, about 1.5 s was lost at each edge).

The edges are then refined with the windows themselves and the frame-level sound level:
a core grows cell by cell while some window covering the next cell still looks like the
target (scores at least `edge_threshold`, calibrated on the target's own film-like
windows) and the cell is about as loud in the speech band as the core (within
`tag.edge_db`), so that a segment stops where the speech stops and does not spread into
the quieter background between sentences.

Cells under AudioParams.silence_db (digital silence: the zeros that fill a gap in a film's
audio) are never part of a segment, whatever the windows around them score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from .params import AudioParams, TagParams


@dataclass(frozen=True)
class Segment:
    start_s: float  # seconds from the start of the input
    end_s: float
    score: float  # mean score of the segment's cells at or above the threshold (its cores)
    label: str = "target"  # the voice's name

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def cell_scores(window_scores: np.ndarray, p: AudioParams) -> np.ndarray:
    """(n_windows,) -> (n_cells,) hop-long cells, each the mean of the windows covering it.

    Cell c spans [c * hop_s, (c + 1) * hop_s); n_cells = n_windows - 1 + windows_per_cell.
    """
    n = len(window_scores)
    if n == 0:
        return np.zeros(0, np.float32)
    r = p.cells_per_window
    sums = np.convolve(window_scores.astype(np.float64), np.ones(r))
    counts = np.convolve(np.ones(n), np.ones(r))
    return (sums / counts).astype(np.float32)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs in a 1-D bool mask."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def max_cell_scores(window_scores: np.ndarray, p: AudioParams) -> np.ndarray:
    """(n_windows,) -> (n_cells,) the best score among the windows covering each cell."""
    r = p.cells_per_window
    if len(window_scores) == 0:
        return np.zeros(0, np.float32)
    pad = np.full(r - 1, -np.inf, np.float32)
    padded = np.concatenate([pad, window_scores.astype(np.float32), pad])
    return np.lib.stride_tricks.sliding_window_view(padded, r).max(axis=1)


def grow_edges(core: list[tuple[int, int]], can_grow: np.ndarray, cell_db: np.ndarray, edge_db: float
               ) -> list[tuple[int, int]]:
    """Widen each [a, b) run of core cells over neighbouring cells where can_grow is True and
    the level is at least the core's median level (dB) minus edge_db; runs that meet join."""
    n = len(can_grow)
    grown = []
    for a, b in core:
        floor_db = float(np.median(cell_db[a:b])) - edge_db
        while a > 0 and can_grow[a - 1] and cell_db[a - 1] >= floor_db:
            a -= 1
        while b < n and can_grow[b] and cell_db[b] >= floor_db:
            b += 1
        if grown and a <= grown[-1][1]:
            grown[-1] = (grown[-1][0], max(b, grown[-1][1]))
        else:
            grown.append((a, b))
    return grown


def segment_runs(window_scores: np.ndarray, threshold: float, audio: AudioParams, tag: TagParams,
                 cell_db: np.ndarray | None = None, edge_threshold: float | None = None
                 ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Window scores -> (cells (n_cells,) cell scores, [a, b) runs of cells the voice holds),
    before merging and the length filter; see to_segments."""
    cells = cell_scores(window_scores, audio)
    heard = None
    if cell_db is not None and len(cells):
        if len(cell_db) != len(cells):
            raise ValueError(f"cell_db has {len(cell_db)} cells, the scores {len(cells)}")
        heard = cell_db >= np.float32(audio.silence_db)
        cells = np.where(heard, cells, np.float32(-np.inf))
    # Hysteresis: a run of cells above threshold - hysteresis counts when it reaches the
    # threshold somewhere.
    high = cells >= threshold
    found = [(a, b) for a, b in runs(cells >= threshold - tag.hysteresis) if high[a:b].any()]
    if heard is not None and edge_threshold is not None:
        can_grow = (max_cell_scores(window_scores, audio) >= max(threshold, edge_threshold)) & heard
        found = grow_edges(found, can_grow, cell_db, tag.edge_db)
    return cells, found


def runs_to_segments(found: list[tuple[int, int]], cells: np.ndarray, threshold: float, hop_s: float,
                     limit_s: float, tag: TagParams, label: str = "target",
                     blocked: np.ndarray | None = None) -> list[Segment]:
    """[a, b) cell runs -> segments (seconds, clipped to limit_s): runs closer than
    tag.min_gap_s merge unless a cell between them is `blocked` (bool (n_cells,), held by
    another voice); runs without a cell at the threshold and those shorter than
    tag.min_duration_s are dropped."""
    high = cells >= threshold
    merged: list[list] = []
    for a, b in found:
        start, end = a * hop_s, min(b * hop_s, limit_s)
        if (merged and start - merged[-1][1] < tag.min_gap_s
                and (blocked is None or not blocked[merged[-1][3]:a].any())):
            merged[-1][1], merged[-1][3] = end, b
        else:
            merged.append([start, end, a, b])
    # A segment's score is that of its cores: grown edges and merged gaps score under the
    # threshold by construction and would make a sure segment look doubtful.
    return [Segment(round(s, 3), round(e, 3), float(cells[a:b][high[a:b]].mean()), label)
            for s, e, a, b in merged if e - s >= tag.min_duration_s and high[a:b].any()]


@dataclass(frozen=True)
class ShortEdges:
    """How a segment's edges are moved to where short windows (about 1 s, two per cell,
    model.embed_short) stop looking like the voice: a 2 s window holding the end of the
    target's turn and the start of another's still scores as the target, a 1 s one much less."""
    level: float = -0.15  # a short window is the voice's when it scores at least the threshold plus this
    extend_level: float = -0.15  # an edge moves outwards only over short windows scoring the threshold plus this
    search_s: float = 1.5  # an edge moves inwards at most this far
    extend_s: float = 0.5  # ... and outwards at most this far (a cell: what a live stream has when it settles)


SHORT_EDGES = ShortEdges()


def short_centres_s(index: np.ndarray, audio: AudioParams) -> np.ndarray:
    """Centre (seconds) of short window k: it starts k // 2 hops and k % 2 half hops in and
    spans about two hops of input."""
    return ((index // 2) * audio.hop_frames + (index % 2) * (audio.hop_frames // 2) + audio.hop_frames) * audio.frame_s


def _crossing(scores: np.ndarray, centres: np.ndarray, k: int, step: int, level: float) -> float | None:
    """Where the scores cross `level` between short window k (at or above it) and k + step; None
    when there is no window k + step: the voice runs on to the start or end of the input."""
    j = k + step
    if not 0 <= j < len(scores):
        return None
    f = min(1.0, max(0.0, (scores[k] - level) / max(float(scores[k] - scores[j]), 1e-6)))
    return float(centres[k] + f * (centres[j] - centres[k]))


def _short_edge(scores: np.ndarray, centres: np.ndarray, edge_s: float, level: float, se: ShortEdges,
                end: bool) -> float | None:
    """The edge at `edge_s` (a segment's end, or its start) moved to the crossing of `level`
    nearest it that the segment's inside reaches; None: no short window near it looks like the voice,
    or the voice runs on to the input's start or end."""
    if end:
        zone = np.flatnonzero((centres >= edge_s - se.search_s) & (centres <= edge_s + se.extend_s))
    else:
        zone = np.flatnonzero((centres >= edge_s - se.extend_s) & (centres <= edge_s + se.search_s))
    found = [(zone[a], zone[b - 1]) for a, b in runs(scores[zone] >= level)
             if (centres[zone[a]] < edge_s if end else centres[zone[b - 1]] > edge_s)]
    if not found:
        return None
    return _crossing(scores, centres, found[-1][1], 1, level) if end else _crossing(scores, centres, found[0][0], -1, level)


def short_edges(start_s: float, end_s: float, short_scores: np.ndarray, first: int, threshold: float,
                audio: AudioParams, se: ShortEdges = SHORT_EDGES, outward: tuple[bool, bool] = (True, True)
                ) -> tuple[float, float]:
    """One segment's edges moved with the short windows' scores: short_scores (k,) those of
    short windows first.. (all those within a cell and a half of the segment and inside it)
    -> (start_s, end_s), at most se.search_s in and se.extend_s out; outward: whether the start
    and the end may move out at all (not into digital silence)."""
    scores = np.asarray(short_scores, np.float64)
    centres = short_centres_s(np.arange(first, first + len(scores)), audio)
    edges = []
    for edge_s, end, out_s in ((start_s, False, se.extend_s * outward[0]), (end_s, True, se.extend_s * outward[1])):
        moved = _short_edge(scores, centres, edge_s, threshold + se.level, se, end)
        if moved is not None and (moved > edge_s) == end and moved != edge_s:
            out = _short_edge(scores, centres, edge_s, threshold + se.extend_level, se, end)
            moved = edge_s if out is None else (min(moved, max(edge_s, out)) if end else max(moved, min(edge_s, out)))
        moved = edge_s if moved is None else moved
        edges.append(min(max(moved, edge_s - se.search_s), edge_s + out_s) if end
                     else min(max(moved, edge_s - out_s), edge_s + se.search_s))
    start, end = edges
    return (start_s, end_s) if end - start < audio.hop_s else (round(start, 3), round(end, 3))


def short_window_span(a: int, b: int, n_cells: int) -> tuple[int, int]:
    """[first, stop) short windows the edges of a segment over cells [a, b) may use (of n_cells
    cells with short windows): what a live stream still holds when it settles the segment."""
    return 2 * max(0, a - 3), 2 * min(n_cells, b + 1)


def short_windows_needed(window_scores: np.ndarray, level: float, audio: AudioParams,
                         se: ShortEdges = SHORT_EDGES) -> np.ndarray:
    """(n,) window scores of a batch -> (n,) bool: the windows whose short windows segment edges
    may read (short_edges), when a segment's cells need a window at `level` (the threshold less
    the hysteresis) among the cells_per_window covering each: those within that coverage plus
    search_s of such a window, and, not knowing the windows of the batches beside, that many at
    each end of the batch. Embedding only these gives the same segments as embedding all."""
    reach = audio.cells_per_window - 1 + math.ceil(se.search_s / audio.hop_s)
    high = (np.asarray(window_scores) >= level).astype(np.int32)
    near = np.convolve(high, np.ones(2 * reach + 1, np.int32))[reach:reach + len(high)] > 0
    near[:reach] = near[-reach:] = True
    return near


def may_move_out(cell_db: Sequence[float], a: int, b: int, audio: AudioParams) -> tuple[bool, bool]:
    """Whether the start and the end of a segment over cells [a, b) of cell_db (levels, dB) may
    move out: only over a cell that is there and holds sound, not digital silence."""
    silence = np.float32(audio.silence_db)
    return a > 0 and cell_db[a - 1] >= silence, b < len(cell_db) and cell_db[b] >= silence


def apply_short_edges(segments: list[Segment], short_scores: np.ndarray, threshold: float, audio: AudioParams,
                      limit_s: float, se: ShortEdges = SHORT_EDGES, cell_db: np.ndarray | None = None
                      ) -> list[Segment]:
    """short_edges on each segment, none starting before the previous one ends; with cell_db
    (n_cells,), never into digital silence (may_move_out)."""
    out: list[Segment] = []
    n_cells = len(short_scores) // 2
    for seg in segments:
        a, b = round(seg.start_s / audio.hop_s), round(seg.end_s / audio.hop_s)
        first, stop = short_window_span(a, b, n_cells)
        outward = (a > 0, True) if cell_db is None else may_move_out(cell_db, a, b, audio)
        start, end = short_edges(seg.start_s, seg.end_s, short_scores[first:stop], first, threshold, audio, se,
                                 outward)
        start = max(start, out[-1].end_s) if out else max(start, 0.0)
        out.append(replace(seg, start_s=start, end_s=min(end, limit_s)))
    return out


def to_segments(window_scores: np.ndarray, threshold: float, audio: AudioParams, tag: TagParams,
                label: str = "target", duration_s: float | None = None, cell_db: np.ndarray | None = None,
                edge_threshold: float | None = None, short_scores: np.ndarray | None = None) -> list[Segment]:
    """Window scores -> merged, length-filtered segments (seconds), clipped to duration_s.

    cell_db: (n_cells,) speech-band level of each hop-long cell (features.cell_levels_db);
    with it, cells of digital silence are left out, and with edge_threshold too, the
    segments' edges are refined (see the module's text):
    a cell joins a neighbouring segment when a window covering it scores at least
    max(threshold, edge_threshold). Without them, segments are the runs of cells whose mean
    score reaches the threshold.
    """
    cells, found = segment_runs(window_scores, threshold, audio, tag, cell_db, edge_threshold)
    limit = duration_s if duration_s is not None else len(cells) * audio.hop_s
    segments = runs_to_segments(found, cells, threshold, audio.hop_s, limit, tag, label)
    if short_scores is not None and tag.short_edges:
        segments = apply_short_edges(segments, short_scores, threshold, audio, limit, cell_db=cell_db)
    return segments


def exclusive_segments(voices: Sequence[tuple[np.ndarray, float, list[tuple[int, int]], TagParams, str]],
                       hop_s: float, limit_s: float) -> list[list[Segment]]:
    """Each cell to at most one voice, then each voice's segments re-formed.

    voices: per voice (cells (n_cells,), threshold, its runs from segment_runs, its tag
    params, its label), all with the same cells. A cell several voices' runs hold goes to
    the one whose cell score is furthest above its own threshold (the first voice on a
    tie). Returns each voice's segments, in the order given; no two overlap.
    """
    if not voices:
        return []
    margin = np.full((len(voices), len(voices[0][0])), -np.inf)
    for v, (cells, threshold, found, _, _) in enumerate(voices):
        for a, b in found:
            margin[v, a:b] = cells[a:b] - threshold
    owner = np.where(np.isfinite(margin).any(axis=0), margin.argmax(axis=0), -1)
    out = []
    for v, (cells, threshold, _, tag, label) in enumerate(voices):
        held = runs(owner == v)
        out.append(runs_to_segments(held, cells, threshold, hop_s, limit_s, tag, label,
                                    blocked=(owner >= 0) & (owner != v)))
    return out


class SegmentStream:
    """to_segments for a stream: window scores go in as they are computed, and each segment
    comes out as soon as nothing that follows can change it. On a whole film it gives the
    segments to_segments gives (cell scores summed in another order may differ in the last
    bit of a float64).

    A cell is final once the last window covering it is in (window c, for cell c). A core
    (a run of cells at the threshold) is known when a cell below it arrives, its edges when
    growth stops, and the segment when no later run could join it: a later core can grow
    back only as far as the last cell no window covering it looks like the voice (a cell
    that cannot grow), so the segment is final once such a cell lies at least min_gap_s
    after its end. Only the cells from the earliest of those points on are kept.

    max_delay_s: when the windows so far cover this much audio after a segment's end and it
    is not settled yet, it is settled anyway (a live stream waits no longer): a later run that
    would have joined it then starts a new segment at its end. None: always exact.
    """

    def __init__(self, threshold: float, audio: AudioParams, tag: TagParams, label: str = "target",
                 edge_threshold: float | None = None, max_delay_s: float | None = None):
        # Cells are float32 and compared in float32, as NumPy compares them in to_segments.
        self.tag, self.label, self.hop_s = tag, label, audio.hop_s
        self.threshold = float(np.float32(threshold))
        self.threshold_exact = threshold  # as to_segments gets it, for the short windows
        self.low = float(np.float32(threshold - tag.hysteresis))
        self.grow_at = None if edge_threshold is None else float(np.float32(max(threshold, edge_threshold)))
        self.silence_db = float(np.float32(audio.silence_db))
        self.r = audio.cells_per_window
        self.recent: list[float] = []  # the last r - 1 window scores
        self.base = 0  # index of the first kept cell
        self.m: list[float] = []  # kept cells: mean score of the windows covering each
        self.can_grow: list[bool] = []
        self.db: list[float] = []
        self.n = 0  # final cells
        self.last_barrier = -1  # last final cell that cannot grow
        # the open run of cells at threshold - hysteresis: its start, whether it holds a cell at the
        # threshold, the last cell before it that cannot grow
        self.open: tuple[int, bool, int] | None = None
        # known cores, growing to the right: a (grown left), b, floor dB, b grown so far
        self.cores: list[tuple[int, int, float, int]] = []
        self.grown: list[int] | None = None  # the last grown run [a, b), later runs may still join
        self.merged: list | None = None  # [start_s, end_s, a, b] the segment it belongs to
        self.window_s, self.max_delay_s = audio.window_s, max_delay_s
        self.settled_b = 0  # cells before this are in segments already given out
        self.forced = 0  # segments settled by max_delay_s
        self.short: list[float] = []  # kept cells' short-window scores, two per cell (with tag.short_edges)
        self.audio = audio
        self.last_end_s: float | None = None  # where the last segment given out ends

    @property
    def n_short_cells(self) -> int:
        """Cells whose short windows have come."""
        return self.base + len(self.short) // 2

    def _cell(self, i: int) -> tuple[float, bool, float]:
        j = i - self.base
        return self.m[j], self.can_grow[j], self.db[j]

    def _add_cell(self, mean: float, best: float, db: float) -> None:
        c = self.n
        if db < self.silence_db:  # digital silence: to_segments' rule
            mean = best = -math.inf
        grows = self.grow_at is not None and best >= self.grow_at
        self.m.append(mean)
        self.can_grow.append(grows)
        self.db.append(db)
        self.n += 1
        if mean >= self.low:
            if self.open is None:
                self.open = (c, False, self.last_barrier)
            if mean >= self.threshold:
                self.open = (self.open[0], True, self.open[2])
        elif self.open is not None:
            self._close_core(c)
        if not grows:
            self.last_barrier = c

    def _close_core(self, b: int) -> None:
        a, high, _ = self.open
        self.open = None
        if not high:
            return
        if self.grow_at is None:
            self.cores.append((a, b, 0.0, b))
            return
        floor = float(np.float32(float(np.median(np.asarray(self.db[a - self.base:b - self.base], np.float32)))
                                 - self.tag.edge_db))
        while a > 0 and self._cell(a - 1)[1] and self._cell(a - 1)[2] >= floor:
            a -= 1
        self.cores.append((a, b, floor, b))

    def _advance(self, final: bool, limit_s: float | None = None) -> list[Segment]:
        """Grow the known cores over the final cells, join runs, and emit what is settled."""
        out: list[Segment] = []
        while self.cores:
            a, b, floor, y = self.cores[0]
            if self.grow_at is not None:
                while y < self.n and self._cell(y)[1] and self._cell(y)[2] >= floor:
                    y += 1
                if y == self.n and not final:
                    self.cores[0] = (a, b, floor, y)
                    break
            self.cores.pop(0)
            a = max(a, self.settled_b)
            if self.grown is not None and a <= self.grown[1]:
                self.grown[1] = max(y, self.grown[1])
            else:
                self._join(out, limit_s)
                self.grown = [a, y]
        if self.grown is not None and not self.cores:
            # the earliest cell a later run can start at
            if self.grow_at is None:
                earliest = self.open[0] if self.open else self.n
            else:
                earliest = (self.open[2] if self.open else self.last_barrier) + 1
            exact = (earliest > self.grown[1]
                     and earliest * self.hop_s - self.grown[1] * self.hop_s >= self.tag.min_gap_s)
            # A run at the threshold that has begun is a core that will join or follow it: no need to wait for it
            late = (self.max_delay_s is not None and not (self.open and self.open[1])
                    and (self.n - 1) * self.hop_s + self.window_s - self.grown[1] * self.hop_s >= self.max_delay_s)
            if final or exact or late:
                self.forced += int(not (final or exact))
                self.settled_b = self.grown[1]
                self._join(out, limit_s)
                self.grown = None
                self._emit(out, limit_s)
        self._trim()
        return out

    def _join(self, out: list[Segment], limit_s: float | None) -> None:
        """Hand the last grown run to the gap merge (runs_to_segments' rule)."""
        if self.grown is None:
            return
        a, b = self.grown
        start, end = a * self.hop_s, b * self.hop_s if limit_s is None else min(b * self.hop_s, limit_s)
        if self.merged and start - self.merged[1] < self.tag.min_gap_s:
            self.merged[1], self.merged[3] = end, b
        else:
            self._emit(out, limit_s)
            self.merged = [start, end, a, b]

    def _emit(self, out: list[Segment], limit_s: float | None) -> None:
        if self.merged is None:
            return
        s, e, a, b = self.merged
        self.merged = None
        cells = np.asarray(self.m[a - self.base:b - self.base], np.float32)
        high = cells >= self.threshold
        if e - s >= self.tag.min_duration_s and high.any():
            seg = Segment(round(s, 3), round(e, 3), float(cells[high].mean()), self.label)
            if self.tag.short_edges and self.short:
                in_cell, out_cell = round(s / self.hop_s), round(e / self.hop_s)
                first, stop = short_window_span(in_cell, out_cell, self.n_short_cells)
                first = max(first, 2 * self.base)  # equal to it: the cells kept reach three before the segment
                outward = may_move_out(self.db, in_cell - self.base, out_cell - self.base, self.audio)
                start, end = short_edges(seg.start_s, seg.end_s, np.asarray(self.short[first - 2 * self.base:
                                                                                         stop - 2 * self.base]),
                                         first, self.threshold_exact, self.audio, outward=outward)
                start = max(start, self.last_end_s if self.last_end_s is not None else 0.0)
                seg = replace(seg, start_s=start, end_s=end if limit_s is None else min(end, limit_s))
            self.last_end_s = seg.end_s
            out.append(seg)

    def _trim(self) -> None:
        keep = [self.n, self.last_barrier]
        if self.open:
            keep += [self.open[0], self.open[2]]
        keep += [c[0] for c in self.cores]
        if self.grown:
            keep.append(self.grown[0])
        if self.merged:
            keep.append(self.merged[2])
        drop = max(0, min(keep) - 3) - self.base  # short edges look three cells before a segment
        if drop > 256:  # in bulk: deleting from the front of a list costs its length
            del self.m[:drop], self.can_grow[:drop], self.db[:drop], self.short[:2 * drop]
            self.base += drop

    def push(self, window_scores: np.ndarray, cell_db: np.ndarray, short_scores: np.ndarray | None = None
             ) -> list[Segment]:
        """The next windows' scores (k,) and the levels (k,) of their first cells (cell j of
        window j, features.cell_levels_db) -> the segments this settles, by start time.
        short_scores: (2 k,) their short windows' scores (with tag.short_edges)."""
        if self.tag.short_edges and short_scores is not None:
            self.short += np.asarray(short_scores, np.float32).tolist()
        for score, db in zip(np.asarray(window_scores, np.float64).tolist(), np.asarray(cell_db).tolist()):
            self.recent.append(score)
            cover = self.recent[-self.r:]
            self._add_cell(float(np.float32(sum(cover) / len(cover))), float(np.float32(max(cover))), db)
            self.recent = self.recent[-(self.r - 1):] if self.r > 1 else []
        return self._advance(False)

    def finish(self, last_cell_db: np.ndarray, duration_s: float) -> list[Segment]:
        """The stream has ended: last_cell_db (r - 1,) the levels of the last window's other
        cells (empty when no window came) -> the remaining segments, clipped to duration_s."""
        if self.n:
            n_windows = self.n
            first = n_windows - len(self.recent)  # the window recent[0] is
            for i, db in enumerate(np.asarray(last_cell_db).tolist()):
                cover = self.recent[max(0, n_windows + i - self.r + 1 - first):]
                self._add_cell(float(np.float32(sum(cover) / len(cover))), float(np.float32(max(cover))), db)
        if self.open is not None:
            self._close_core(self.n)
        return self._advance(True, duration_s)
