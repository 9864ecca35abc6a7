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
"""

from __future__ import annotations

from dataclasses import dataclass
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
    r = max(1, round(p.window_frames / p.hop_frames))
    sums = np.convolve(window_scores.astype(np.float64), np.ones(r))
    counts = np.convolve(np.ones(n), np.ones(r))
    return (sums / counts).astype(np.float32)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs in a 1-D bool mask."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def max_cell_scores(window_scores: np.ndarray, p: AudioParams) -> np.ndarray:
    """(n_windows,) -> (n_cells,) the best score among the windows covering each cell."""
    r = max(1, round(p.window_frames / p.hop_frames))
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
    # Hysteresis: a run of cells above threshold - hysteresis counts when it reaches the
    # threshold somewhere.
    high = cells >= threshold
    found = [(a, b) for a, b in runs(cells >= threshold - tag.hysteresis) if high[a:b].any()]
    if cell_db is not None and edge_threshold is not None and len(cells):
        if len(cell_db) != len(cells):
            raise ValueError(f"cell_db has {len(cell_db)} cells, the scores {len(cells)}")
        can_grow = max_cell_scores(window_scores, audio) >= max(threshold, edge_threshold)
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


def to_segments(window_scores: np.ndarray, threshold: float, audio: AudioParams, tag: TagParams,
                label: str = "target", duration_s: float | None = None, cell_db: np.ndarray | None = None,
                edge_threshold: float | None = None) -> list[Segment]:
    """Window scores -> merged, length-filtered segments (seconds), clipped to duration_s.

    cell_db: (n_cells,) speech-band level of each hop-long cell (features.cell_levels_db);
    with it and edge_threshold, the segments' edges are refined (see the module's text):
    a cell joins a neighbouring segment when a window covering it scores at least
    max(threshold, edge_threshold). Without them, segments are the runs of cells whose mean
    score reaches the threshold.
    """
    cells, found = segment_runs(window_scores, threshold, audio, tag, cell_db, edge_threshold)
    limit = duration_s if duration_s is not None else len(cells) * audio.hop_s
    return runs_to_segments(found, cells, threshold, audio.hop_s, limit, tag, label)


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
