import numpy as np
import pytest

from speakertag.params import AudioParams, TagParams
from speakertag.segments import Segment, cell_scores, grow_edges, max_cell_scores, runs, to_segments

A = AudioParams()  # windows of 4 hops: 172 frames every 43
HOP = A.hop_s
TP = TagParams(min_gap_s=0.5, min_duration_s=0.5)


def test_cell_scores_by_hand():
    w = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    cells = cell_scores(w, A)
    assert len(cells) == len(w) - 1 + 4
    # cell c is the mean of windows c-3..c that exist
    expected = [np.mean(w[max(0, c - 3):c + 1]) for c in range(len(cells))]
    np.testing.assert_allclose(cells, expected)
    np.testing.assert_allclose(cells[:4], [1.0, 0.5, 1 / 3, 0.25])
    np.testing.assert_allclose(cells[-1], 1.0)
    assert cell_scores(np.zeros(0), A).shape == (0,)
    np.testing.assert_allclose(cell_scores(np.full(10, 0.7), A), 0.7, rtol=1e-6)


def test_runs():
    assert runs(np.array([0, 1, 1, 0, 1, 0, 0, 1], bool)) == [(1, 3), (4, 5), (7, 8)]
    assert runs(np.zeros(4, bool)) == [] and runs(np.ones(3, bool)) == [(0, 3)]


def test_one_segment_in_seconds():
    w = np.zeros(40)
    w[10:20] = 1.0  # windows 10..19: cells 10..22 covered, fully only 13..19
    segs = to_segments(w, 0.5, A, TP, label="alice")
    assert len(segs) == 1
    s = segs[0]
    assert isinstance(s, Segment) and s.label == "alice"
    cells = cell_scores(w, A)
    on = np.flatnonzero(cells >= 0.5)
    assert s.start_s == pytest.approx(on[0] * HOP, abs=1e-3)
    assert s.end_s == pytest.approx((on[-1] + 1) * HOP, abs=1e-3)
    assert s.score == pytest.approx(cells[on[0]:on[-1] + 1].mean(), abs=1e-6)
    assert s.duration_s == pytest.approx(s.end_s - s.start_s)


def test_gap_merging():
    w = np.zeros(60)
    w[5:15] = w[16:25] = w[40:50] = 1.0  # one window off between the first two runs
    no_rules = TagParams(min_gap_s=0.0, min_duration_s=0.0)
    base = to_segments(w, 0.99, A, no_rules)
    assert len(base) == 3
    gap_s = base[1].start_s - base[0].end_s
    assert gap_s == pytest.approx(4 * HOP, abs=1e-3)  # cells covered by the missing window
    merged = to_segments(w, 0.99, A, TagParams(min_gap_s=gap_s + 0.01, min_duration_s=0.0))
    assert len(merged) == 2
    assert (merged[0].start_s, merged[0].end_s) == (base[0].start_s, base[1].end_s)
    assert merged[1] == base[2]
    # the merged score is the mean over its cells at or above the threshold, not over the gap
    cells = cell_scores(w, A)
    a, b = round(base[0].start_s / HOP), round(base[1].end_s / HOP)
    assert merged[0].score == pytest.approx(cells[a:b][cells[a:b] >= 0.99].mean(), abs=1e-6)
    # the gap must be strictly shorter than min_gap_s (times are rounded to ms: compare unrounded)
    assert len(to_segments(w, 0.99, A, TagParams(min_gap_s=4 * HOP - 1e-6, min_duration_s=0.0))) == 3
    assert len(to_segments(w, 0.99, A, TagParams(min_gap_s=4 * HOP + 1e-6, min_duration_s=0.0))) == 2


def test_short_segments_dropped():
    w = np.zeros(40)
    w[5] = 1.0  # one window alone: the 4 cells it covers score 1/4
    w[20:30] = 1.0
    keep_all = to_segments(w, 0.2, A, TagParams(min_gap_s=0.0, min_duration_s=0.0))
    assert len(keep_all) == 2
    short = keep_all[0].duration_s
    assert short == pytest.approx(4 * HOP, abs=1e-3)
    kept = to_segments(w, 0.2, A, TagParams(min_gap_s=0.0, min_duration_s=short + 0.01))
    assert kept == keep_all[1:]
    assert to_segments(w, 0.2, A, TagParams(min_gap_s=0.0, min_duration_s=short - 0.01)) == keep_all


def test_clipped_to_duration():
    w = np.ones(10)  # cells reach (10 - 1 + 4) * hop = 6.5 s
    segs = to_segments(w, 0.5, A, TP)
    assert segs[0].start_s == 0.0 and segs[0].end_s == pytest.approx(13 * HOP, abs=1e-3)
    duration_s = 5.123
    segs = to_segments(w, 0.5, A, TP, duration_s=duration_s)
    assert segs[0].end_s == pytest.approx(duration_s, abs=1e-3)


def test_nothing_above_threshold():
    assert to_segments(np.full(30, 0.2), 0.5, A, TP) == []
    assert to_segments(np.zeros(0), 0.5, A, TP) == []


# --- edge refinement --------------------------------------------------------------------------

def test_max_cell_scores_by_hand():
    w = np.array([0.1, 0.9, 0.2, 0.3, 0.0, 0.4])
    mx = max_cell_scores(w, A)
    assert len(mx) == len(cell_scores(w, A))
    np.testing.assert_allclose(mx, [max(w[max(0, c - 3):c + 1]) for c in range(len(mx))])
    assert max_cell_scores(np.zeros(0), A).shape == (0,)


def test_grow_edges_stops_at_quiet_cells_and_weak_windows():
    can_grow = np.zeros(20, bool)
    can_grow[2:12] = True
    level_db = np.zeros(20)
    level_db[3] = -15.0  # background between sentences, 15 dB under the core
    assert grow_edges([(6, 9)], can_grow, level_db, 10.0) == [(4, 12)]
    assert grow_edges([(6, 9)], can_grow, level_db, 20.0) == [(2, 12)]
    assert grow_edges([(6, 9)], np.zeros(20, bool), level_db, 10.0) == [(6, 9)]
    # runs that grow into each other join
    assert grow_edges([(4, 6), (9, 11)], can_grow, level_db, 10.0) == [(4, 12)]


def film_like_scores(n_windows: int, target_cells: tuple[int, int]) -> np.ndarray:
    """Scores as the encoder gives them: high (0.8) only for windows wholly inside the
    target's cells, low (0.1) as soon as another voice fills part of the window."""
    r = 4  # cells per window
    starts = np.arange(n_windows)
    inside = (starts >= target_cells[0]) & (starts + r <= target_cells[1])
    return np.where(inside, 0.8, 0.1).astype(np.float32)


def test_edges_reach_the_target_turn_when_its_neighbours_are_as_loud():
    target = (20, 40)  # cells: 10 to 20 s
    w = film_like_scores(60, target)
    n_cells = len(cell_scores(w, A))
    loud = np.zeros(n_cells)  # another voice before and after, as loud as the target
    plain = to_segments(w, 0.5, A, TP)
    assert len(plain) == 1  # the mean of the covering windows loses a second at each end
    assert plain[0].start_s >= (target[0] + 2) * HOP - 1e-3 and plain[0].end_s <= (target[1] - 2) * HOP + 1e-3
    refined = to_segments(w, 0.5, A, TP, cell_db=loud, edge_threshold=0.7)
    assert len(refined) == 1
    assert refined[0].start_s == pytest.approx(target[0] * HOP, abs=1e-3)
    assert refined[0].end_s == pytest.approx(target[1] * HOP, abs=1e-3)
    assert refined[0].score == plain[0].score >= 0.5  # the cores' score, not lowered by the edges
    # windows under the edge threshold do not widen it, nor does a threshold over the windows
    assert to_segments(w, 0.5, A, TP, cell_db=loud, edge_threshold=0.9) == plain
    assert to_segments(w, 0.5, A, TP, cell_db=loud, edge_threshold=None) == plain


def test_edges_stop_where_the_speech_stops():
    """A short sentence in quiet background: windows that hold it score high although they
    are mostly background; the level keeps the segment on the sentence."""
    w = np.full(40, 0.1, np.float32)
    w[18:21] = 0.8  # the windows holding cells 20-21 (10-11 s) whole
    level_db = np.full(len(cell_scores(w, A)), -30.0)
    level_db[20:22] = 0.0
    segs = to_segments(w, 0.5, A, TagParams(min_gap_s=0.5, min_duration_s=0.0), cell_db=level_db,
                       edge_threshold=0.7)
    assert [(s.start_s, s.end_s) for s in segs] == [(pytest.approx(20 * HOP, abs=1e-3), pytest.approx(22 * HOP, abs=1e-3))]
    # without the levels, the windows' whole span would be marked
    wide = to_segments(w, 0.5, A, TagParams(min_gap_s=0.5, min_duration_s=0.0), cell_db=np.zeros_like(level_db),
                       edge_threshold=0.7)
    assert (wide[0].start_s, wide[0].end_s) == (pytest.approx(18 * HOP, abs=1e-3), pytest.approx(24 * HOP, abs=1e-3))


def test_cell_levels_must_match_the_cells():
    with pytest.raises(ValueError, match="cells"):
        to_segments(np.ones(10), 0.5, A, TP, cell_db=np.zeros(5), edge_threshold=0.5)


@pytest.mark.parametrize("edge", [None, 0.4])
def test_digital_silence_is_never_in_a_segment(edge):
    """Cells of zeros (a gap in a film's audio, filled) are left out however the windows around
    them score, also when the segment's own cells are quiet enough to grow over them; the
    stream does the same."""
    import torch

    from speakertag.features import cell_levels_db, log_mel
    from speakertag.segments import SegmentStream

    zeros_db = float(cell_levels_db(log_mel(torch.zeros(A.window_samples), A)[None], A)[0, 0])
    assert zeros_db < A.silence_db
    w = np.full(40, 0.9, np.float32)
    levels = np.full(43, -20.0, np.float32)
    levels[10:15] = A.silence_db + 5  # quiet, but heard
    levels[15:25] = zeros_db
    batch = to_segments(w, 0.5, A, TP, "v", None, levels, edge)
    assert [(s.start_s, s.end_s) for s in batch] == [(0.0, round(15 * HOP, 3)), (round(25 * HOP, 3), round(43 * HOP, 3))]
    st = SegmentStream(0.5, A, TP, "v", edge)
    assert st.push(w, levels[:40]) + st.finish(levels[40:], 43 * HOP) == batch


def _random_film(seed: int, n_windows: int = 600):
    """Window scores that drift in and out of a voice, and cell levels with loud and quiet stretches."""
    rng = np.random.default_rng(seed)
    scores = np.clip(np.cumsum(rng.normal(0, 0.08, n_windows)) * 0.3 + 0.4, -1.5, 1.5).astype(np.float32)
    levels = (rng.normal(-30, 6, n_windows + 3) + 12 * (rng.random(n_windows + 3) < 0.3)).astype(np.float32)
    return scores, levels


@pytest.mark.parametrize("seed", range(6))
def test_segment_stream_gives_the_batch_segments(seed):
    from speakertag.segments import SegmentStream

    p, tp = AudioParams(), TagParams()
    scores, levels = _random_film(seed)
    n = len(scores)
    duration_s = (n - 1) * p.hop_s + p.window_s + 0.1
    for threshold in (0.3, 0.4, 0.5):
        for edge in (None, threshold - 0.1, threshold + 0.05):
            batch = to_segments(scores, threshold, p, tp, "v", duration_s, levels, edge)
            for chunk in (1, 5, 64):
                st = SegmentStream(threshold, p, tp, "v", edge)
                got = []
                for i in range(0, n, chunk):
                    got += st.push(scores[i:i + chunk], levels[i:i + chunk])
                got += st.finish(levels[n:], duration_s)
                assert got == batch, (threshold, edge, chunk)


def test_segment_stream_with_a_deadline_is_prompt_and_within_a_cell():
    """max_delay_s: every segment comes by the window that covers 2.5 s past its end, and
    the time covered differs from the batch segments' by at most one cell at a few places."""
    from speakertag.segments import SegmentStream

    p, tp = AudioParams(), TagParams()
    for seed in range(6):
        scores, levels = _random_film(seed)
        n = len(scores)
        duration_s = (n - 1) * p.hop_s + p.window_s
        batch = to_segments(scores, 0.4, p, tp, "v", duration_s, levels, 0.35)
        st = SegmentStream(0.4, p, tp, "v", 0.35, max_delay_s=2.4)
        got = []
        for i in range(n):
            for s in st.push(scores[i:i + 1], levels[i:i + 1]):
                assert i * p.hop_s + p.window_s - s.end_s <= 2.5 + 1e-6  # audio the windows so far cover
                got.append(s)
        got += st.finish(levels[n:], duration_s)
        grid = np.arange(0, duration_s, 0.01)

        def covered(segs):
            return np.any([(grid >= s.start_s) & (grid < s.end_s) for s in segs] or [grid < 0], axis=0)
        differ = covered(batch) ^ covered(got)
        assert differ.sum() * 0.01 <= 0.5 * st.forced + 0.02, seed
        assert all(b - a <= 51 for a, b in runs(differ))  # never more than one cell in a row


# ---- edges from short windows ----

def _short_scores(n_cells: int, voice_s: list[tuple[float, float]], p: AudioParams) -> np.ndarray:
    """Short-window scores 0.6 where a window's centre is in a voice span, 0 elsewhere."""
    from speakertag.segments import short_centres_s

    centres = short_centres_s(np.arange(2 * n_cells), p)
    return np.where(np.any([(centres >= a) & (centres < b) for a, b in voice_s], axis=0), 0.6, 0.0)


def test_short_edges_trim_and_extend_to_the_crossing():
    from speakertag.segments import ShortEdges, short_centres_s, short_edges

    p = AudioParams()
    scores = _short_scores(100, [(10.1, 20.3)], p)
    se = ShortEdges(level=-0.2, extend_level=-0.1, search_s=1.5, extend_s=0.5)
    start, end = short_edges(9.0, 21.0, scores, 0, 0.5, p, se)  # the segment runs on 1 s past each edge
    centres = short_centres_s(np.arange(200), p)
    first, last = centres[scores > 0][[0, -1]]
    step = centres[1] - centres[0]
    # the crossing of 0.3 lies half way between the last window at 0.6 and the first at 0
    assert start == pytest.approx(first - step / 2, abs=0.01) and end == pytest.approx(last + step / 2, abs=0.01)
    # a segment cut short grows, by at most extend_s
    start, end = short_edges(11.0, 19.5, scores, 0, 0.5, p, se)
    assert start == pytest.approx(10.5) and end == pytest.approx(20.0)
    # nothing like the voice near an edge: it stays
    assert short_edges(30.0, 35.0, scores, 0, 0.5, p, se) == (30.0, 35.0)
    # the voice from the input's first short window to its last: the edges stay at its start and end
    everywhere = np.full(20, 0.6)
    assert short_edges(0.0, 5.5, everywhere, 0, 0.5, p, se) == (0.0, 5.5)


@pytest.mark.parametrize("seed", range(4))
def test_segment_stream_gives_the_batch_short_edges(seed):
    from dataclasses import replace

    from speakertag.segments import SegmentStream

    p, tp = AudioParams(), TagParams(short_edges=True)
    scores, levels = _random_film(seed)
    n = len(scores)
    short = (np.repeat(scores, 2) + np.random.default_rng(seed).normal(0, 0.15, 2 * n)).astype(np.float32)
    duration_s = (n - 1) * p.hop_s + p.window_s
    moved = 0
    for threshold, edge in ((0.3, 0.25), (0.4, None), (0.5, 0.55)):
        batch = to_segments(scores, threshold, p, tp, "v", duration_s, levels, edge, short)
        plain = to_segments(scores, threshold, p, replace(tp, short_edges=False), "v", duration_s, levels, edge)
        moved += batch != plain
        assert all(a.end_s <= b.start_s for a, b in zip(batch, batch[1:]))
        for chunk in (1, 7, 64):
            for delay in (None, 2.4):
                st = SegmentStream(threshold, p, tp, "v", edge, delay)
                got = []
                for i in range(0, n, chunk):
                    got += st.push(scores[i:i + chunk], levels[i:i + chunk], short[2 * i:2 * (i + chunk)])
                got += st.finish(levels[n:], duration_s)
                if delay is None:
                    assert got == batch, (threshold, edge, chunk)
    assert moved


@pytest.mark.parametrize("seed", range(4))
def test_short_windows_near_the_threshold_are_all_edges_read(seed):
    """Short windows embedded only where short_windows_needed says (a batch at a time, -inf
    elsewhere) give the segments that all of them give, at every threshold and hysteresis."""
    from dataclasses import replace

    from speakertag.segments import short_windows_needed

    p, tp = AudioParams(), TagParams(short_edges=True)
    scores, levels = _random_film(seed)
    n = len(scores)
    short = (np.repeat(scores, 2) + np.random.default_rng(seed).normal(0, 0.15, 2 * n)).astype(np.float32)
    duration_s = (n - 1) * p.hop_s + p.window_s
    for threshold, edge, hysteresis in ((0.3, 0.25, 0.0), (0.4, None, 0.1), (0.5, 0.55, 0.0)):
        t = replace(tp, hysteresis=hysteresis)
        kept = short.copy()
        for i in range(0, n, 50):
            needed = short_windows_needed(scores[i:i + 50], threshold - hysteresis, p)
            kept[2 * i:2 * (i + 50)][~np.repeat(needed, 2)] = -np.inf
        assert np.isinf(kept).any()
        assert (to_segments(scores, threshold, p, t, "v", duration_s, levels, edge, kept)
                == to_segments(scores, threshold, p, t, "v", duration_s, levels, edge, short))
