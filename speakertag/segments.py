"""Window scores -> time segments where the voice speaks.

Windows overlap (a 2 s window every 0.5 s), so every 0.5 s cell of the input is covered
by several windows. A cell's score is the mean score of the windows covering it: a cell
is only marked when most of the windows around it agree, which keeps segment edges
within about one hop of the speech instead of a whole window wide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .params import AudioParams, TagParams


@dataclass(frozen=True)
class Segment:
    start_s: float  # seconds from the start of the input
    end_s: float
    score: float  # mean cell score inside the segment
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


def to_segments(window_scores: np.ndarray, threshold: float, audio: AudioParams, tag: TagParams,
                label: str = "target", duration_s: float | None = None) -> list[Segment]:
    """Window scores -> merged, length-filtered segments (seconds), clipped to duration_s."""
    cells = cell_scores(window_scores, audio)
    hop_s = audio.hop_s
    limit = duration_s if duration_s is not None else len(cells) * hop_s
    # Hysteresis: a run of cells above threshold - hysteresis counts when it reaches the
    # threshold somewhere; its quieter edges (the first and last words) are kept.
    high = cells >= threshold
    spans = [(a * hop_s, min(b * hop_s, limit), a, b) for a, b in runs(cells >= threshold - tag.hysteresis)
             if high[a:b].any()]
    merged: list[list] = []
    for start, end, a, b in spans:
        if merged and start - merged[-1][1] < tag.min_gap_s:
            merged[-1][1], merged[-1][3] = end, b
        else:
            merged.append([start, end, a, b])
    return [Segment(round(s, 3), round(e, 3), float(cells[a:b].mean()), label)
            for s, e, a, b in merged if e - s >= tag.min_duration_s]
