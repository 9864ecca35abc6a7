import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from speakertag.evaluate import (Metrics, anatomy, format_anatomy, format_metrics, pool, pool_anatomy,
                                 read_hypothesis, read_others, read_reference, score)
from speakertag.segments import Segment
from speakertag.writers import render

FIXTURES = Path(__file__).parent / "fixtures"
TARGET_CSV = FIXTURES / "movie01.target.csv"
ALL_RTTM = FIXTURES / "movie01.rttm"


def _load_reference_scorer():
    spec = importlib.util.spec_from_file_location("reference_score", FIXTURES / "reference_score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REF = _load_reference_scorer()


def reference_numbers(ref, hyp, collar_s, step_s=0.01):
    """score.py's printed metrics, renamed to our field names."""
    out = REF.finish(REF.score(ref, hyp, collar_s, step_s), collar_s)
    out["collar_s"] = out.pop("collar")
    return out


def ours(m: Metrics) -> dict:
    return dataclasses.asdict(m.rounded())


# ---- hand-computed cases ----

def test_overlap_without_collar():
    m = score([(1.0, 3.0)], [(2.0, 4.0)], collar_s=0)
    assert (m.tp_s, m.false_alarm_s, m.miss_s, m.target_s, m.hyp_s) == pytest.approx((1, 1, 1, 2, 2))
    assert (m.precision, m.recall, m.f1, m.detection_error) == pytest.approx((0.5, 0.5, 0.5, 1.0))


def test_collar_removes_time_around_reference_boundaries():
    # unscored: [0.75, 1.25) and [2.75, 3.25); the hypothesis starts late and stops early
    m = score([(1.0, 3.0)], [(1.5, 2.8)], collar_s=0.25)
    assert m.target_s == pytest.approx(2.0) and m.target_scored_s == pytest.approx(1.5)
    assert (m.tp_s, m.miss_s, m.false_alarm_s, m.hyp_s) == pytest.approx((1.25, 0.25, 0.0, 1.3))
    assert (m.precision, m.recall) == pytest.approx((1.0, 1.25 / 1.5))
    # false alarms only count outside the collars too
    m = score([(1.0, 3.0)], [(0.0, 4.0)], collar_s=0.25)
    assert m.false_alarm_s == pytest.approx(0.75 + 0.75) and m.miss_s == 0


def test_zero_division_conventions():
    m = score([], [(0.0, 1.0)])
    assert (m.precision, m.recall, m.f1, m.detection_error, m.false_alarm_s) == (0.0, 0.0, 0.0, None, 1.0)
    m = score([(0.0, 1.0)], [])
    assert (m.precision, m.recall, m.f1, m.detection_error) == (0.0, 0.0, 0.0, 1.0)
    m = score([], [])
    assert m.detection_error is None and m.tp_s == m.hyp_s == 0


def test_pool_sums_seconds_and_recomputes_ratios():
    a, b = score([(0.0, 1.0)], [(0.0, 1.0)], collar_s=0), score([(0.0, 1.0)], [(5.0, 6.0)], collar_s=0)
    p = pool([a, b])
    assert (p.tp_s, p.miss_s, p.false_alarm_s, p.target_s) == pytest.approx((1, 1, 1, 2))
    assert (p.precision, p.recall, p.detection_error) == pytest.approx((0.5, 0.5, 1.0))
    with pytest.raises(ValueError, match="different collars"):
        pool([a, score([], [], collar_s=0.25)])
    with pytest.raises(ValueError):
        pool([])


def test_format_metrics():
    text = format_metrics(score([(1.0, 3.0)], [(2.0, 4.0)]))
    assert "precision" in text and "detection error" in text and "collar 0.25 s" in text
    assert "n/a" in format_metrics(score([], []))


# ---- agreement with the reference scorer ----

def random_spans(rng, n, length_s=120.0):
    """n spans: some on a 5 ms grid (rounding ties), some touching, overlapping or empty."""
    starts = np.sort(rng.uniform(0, length_s, n))
    starts[: n // 2] = np.round(starts[: n // 2] / 0.005) * 0.005
    ends = starts + rng.choice([0.0, 0.005, 0.3, 2.0, 7.0], n) * rng.uniform(0.5, 1.5, n)
    spans = [(float(s), float(e)) for s, e in zip(starts, ends)]
    for i in range(0, n - 1, 4):  # touching: the next span starts where this one ends
        spans[i + 1] = (spans[i][1], spans[i][1] + 1.0)
    return spans


def near_boundaries(rng, ref, collar_s):
    """Hypothesis spans whose ends sit at, just inside or just outside the collar of reference boundaries."""
    offsets = collar_s + np.array([-0.01, -0.005, 0.0, 0.005, 0.01])
    return [(max(0.0, s - rng.choice(offsets)), e + rng.choice(offsets)) for s, e in ref]


@pytest.mark.parametrize("seed", range(8))
def test_agrees_with_reference_scorer_on_random_spans(seed):
    rng = np.random.default_rng(seed)
    ref = random_spans(rng, int(rng.integers(0, 25)))
    hyps = [random_spans(rng, int(rng.integers(0, 25))), near_boundaries(rng, ref, 0.25), ref, []]
    metrics = []
    for hyp in hyps:
        for collar_s, step_s in [(0.25, 0.01), (0.0, 0.01), (0.1, 0.02), (0.25, 0.005)]:
            m = score(ref, hyp, collar_s, step_s)
            c = REF.score(ref, hyp, collar_s, step_s)
            assert (m.tp_s, m.false_alarm_s, m.miss_s, m.target_s, m.hyp_s) == (
                c["tp"], c["fa"], c["miss"], c["ref_total"], c["hyp_total"])
            assert ours(m) == reference_numbers(ref, hyp, collar_s, step_s)
        metrics.append(score(ref, hyp))
    pooled = {k: sum(REF.score(ref, h)[k] for h in hyps) for k in ("tp", "fa", "miss", "ref_total", "hyp_total")}
    expected = REF.finish(pooled, 0.25)
    expected["collar_s"] = expected.pop("collar")
    assert ours(pool(metrics)) == expected


def test_reads_real_reference_like_the_reference_scorer():
    from_csv = read_reference(TARGET_CSV)
    from_rttm = read_reference(ALL_RTTM, "ls_2609")
    assert from_csv == REF.read_reference(str(TARGET_CSV))[0]
    assert from_rttm == REF.read_reference(str(ALL_RTTM), "ls_2609")[0]
    assert len(from_csv) == 4 and np.allclose(from_csv, from_rttm, atol=1e-9)
    assert read_reference(TARGET_CSV, "ls_2609") == from_csv


@pytest.mark.parametrize("other", ["ls_3005", "ast_esco_july", "ls_2609"])
def test_agrees_with_reference_scorer_on_real_reference(other):
    hyp = read_reference(ALL_RTTM, other)
    for ref in (read_reference(TARGET_CSV), read_reference(ALL_RTTM, "ls_2609")):
        for collar_s in (0.25, 0.0):
            assert ours(score(ref, hyp, collar_s)) == reference_numbers(ref, hyp, collar_s)
    assert score(read_reference(TARGET_CSV), hyp) == score(read_reference(ALL_RTTM, "ls_2609"), hyp)


# ---- error anatomy ----

def test_anatomy_on_hand_made_spans():
    ref = [(10.0, 20.0), (30.0, 32.0)]
    hyp = [(9.0, 15.0), (21.5, 22.0), (40.0, 41.0)]
    others = [(9.0, 9.5, "bob"), (9.25, 9.5, "carol"), (40.0, 40.5, "bob"), (21.0, 23.0, "dan")]
    a = anatomy(ref, hyp, others)
    assert a.metrics == score(ref, hyp)
    # 9.0-9.75 is within 1 s of the target's speech (9.75-10.25 is collar); 21.5-22 and 40-41 are not
    assert a.false_alarm_edge_s == pytest.approx(0.75) and a.false_alarm_elsewhere_s == pytest.approx(1.5)
    # 15-19.75 of a turn found in part; 30.25-31.75 of a turn missed whole
    assert a.miss_edge_s == pytest.approx(4.75) and a.miss_whole_s == pytest.approx(1.5)
    assert (a.segments, a.segments_missed) == (2, 1)
    # 9.25-9.5: bob and carol at once, shared
    assert a.false_alarm_by_speaker == pytest.approx({"bob": 0.875, "dan": 0.5, "carol": 0.125, "": 0.75})
    assert sum(a.false_alarm_by_speaker.values()) == pytest.approx(a.metrics.false_alarm_s)
    # collar 0: TP 5 s, FA 2.5 s, miss 7 s
    assert a.exact.f1 == pytest.approx(10 / 19.5)
    assert anatomy(ref, hyp).false_alarm_by_speaker is None
    text = format_anatomy(a)
    assert "0.8 s within 1 s" in text and "1 of 2 turns missed whole" in text and "non-speech 0.8 s" in text


def test_pool_anatomy_sums():
    a = anatomy([(10.0, 20.0)], [(9.0, 15.0)])
    b = anatomy([(30.0, 32.0)], [(40.0, 41.0)])
    p = pool_anatomy([a, b])
    assert p.false_alarm_edge_s == pytest.approx(0.75) and p.false_alarm_elsewhere_s == pytest.approx(1.0)
    assert (p.segments, p.segments_missed) == (2, 1)
    assert p.metrics == pool([a.metrics, b.metrics]) and p.exact == pool([a.exact, b.exact])


def test_anatomy_on_the_example_films_reference():
    ref = read_reference(TARGET_CSV)
    others = read_others(ALL_RTTM, "ls_2609")
    assert read_others(TARGET_CSV) is None and all(k != "ls_2609" for _, _, k in others)
    exact = anatomy(ref, ref, others)
    assert exact.metrics.f1 == 1.0 and exact.false_alarm_edge_s == exact.miss_edge_s == exact.miss_whole_s == 0
    # every turn 0.5 s late, the first one missed: 0.25 s of each edge is outside the collar
    late = [(s + 0.5, e + 0.5) for s, e in ref[1:]]
    a = anatomy(ref, late, others)
    assert a.false_alarm_edge_s == pytest.approx(0.75) and a.false_alarm_elsewhere_s == 0
    assert a.miss_edge_s == pytest.approx(0.75)
    assert a.miss_whole_s == pytest.approx(69.091 - 50.961 - 0.5, abs=0.011) and a.segments_missed == 1
    assert sum(a.false_alarm_by_speaker.values()) == pytest.approx(a.metrics.false_alarm_s)


# ---- reading files ----

def test_reference_speaker_selection_errors():
    with pytest.raises(ValueError, match="several speakers.*ls_2609"):
        read_reference(ALL_RTTM)
    with pytest.raises(ValueError, match="speaker 'nobody' not in reference"):
        read_reference(ALL_RTTM, "nobody")


def test_reference_csv_variants(tmp_path):
    path = tmp_path / "ref.csv"
    path.write_text("# comment\n\n1.0,2.5\n3,4\n")
    assert read_reference(path) == [(1.0, 2.5), (3.0, 4.0)]


@pytest.mark.parametrize("fmt", ["json", "csv", "rttm"])
def test_reads_speakertag_outputs(tmp_path, fmt):
    segments = [Segment(1.0, 2.5, 0.9, label="a voice"), Segment(10.0, 12.25, 0.7, label="a voice")]
    path = tmp_path / f"hyp.{fmt}"
    path.write_text(render(fmt, segments, input_path="a b.mkv"))
    assert read_hypothesis(path) == [(1.0, 2.5), (10.0, 12.25)]


@pytest.mark.parametrize("text", ['[[1, 2.5], [10, 12.25]]', '[{"start": 1, "end": 2.5}, {"start": 10, "end": 12.25}]',
                                  "1,2.5,0.9\n10,12.25\n"])
def test_reads_other_hypothesis_forms(tmp_path, text):
    path = tmp_path / "hyp.txt"
    path.write_text(text)
    assert read_hypothesis(path) == [(1.0, 2.5), (10.0, 12.25)]


@pytest.mark.parametrize("name, text, message", [
    ("h.json", '{"segments": [{"start": 1}]}', r"segment 0: expected"),
    ("h.json", '{"segments": [1, 2', r"invalid JSON"),
    ("h.json", '{"ranges": []}', r'"segments" list'),
    ("h.csv", "start,end\n1,2\noops,3\n", r"line 3: expected start and end times"),
    ("h.csv", "1,2\n3,2\n", r"line 2: bad segment"),
    ("h.csv", "1,nan\n", r"line 1: bad segment"),
    ("h.rttm", "SPEAKER f 1 1.0\n", r"line 1: expected 'SPEAKER"),
    ("h.rttm", "SPEAKER f 1 1.0 -0.5 <NA> <NA> x <NA> <NA>\n", r"line 1: bad segment"),
])
def test_malformed_files_raise_one_line_value_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    for read in (read_hypothesis, read_reference):
        if read is read_reference and name.endswith(".json"):
            continue
        with pytest.raises(ValueError, match=message) as e:
            read(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "h.csv"
    path.write_bytes(b"\xff\xfe1,2\n")
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        read_hypothesis(path)


@pytest.mark.parametrize("fmt", ["json", "csv", "rttm"])
def test_hypothesis_with_several_voices_needs_one_chosen(fmt, tmp_path):
    from speakertag.segments import Segment
    from speakertag.writers import SUFFIX, render

    segments = [Segment(1.0, 2.5, 0.8, "alice"), Segment(2.0, 4.0, 0.7, "bob"), Segment(10.0, 12.25, 0.9, "alice")]
    path = tmp_path / f"two{SUFFIX[fmt]}"
    path.write_text(render(fmt, segments, input_path="film.mkv"))
    with pytest.raises(ValueError, match="several voices \\(alice, bob\\); choose one with --voice"):
        read_hypothesis(path)
    assert read_hypothesis(path, "alice") == [(1.0, 2.5), (10.0, 12.25)]
    assert read_hypothesis(path, "bob") == [(2.0, 4.0)]
    with pytest.raises(ValueError, match="voice 'carol' not in hypothesis"):
        read_hypothesis(path, "carol")
