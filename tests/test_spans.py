"""Spans: times and the FILM@SPANS syntax of train --positive, pure parsing (no decoding)."""

import os
from pathlib import Path

import pytest

from speakertag.errors import SpeakertagError
from speakertag.spans import FilmSpans, check_disjoint, parse_spans, parse_time, split_sources


@pytest.mark.parametrize("text, seconds", [
    ("190", 190.0), ("1022.5", 1022.5), (".5", 0.5), ("7.", 7.0), (" 12 ", 12.0),
    ("03:10", 190.0), ("3:10", 190.0), ("00:03:10", 190.0), ("1:02:03.5", 3723.5), ("90:00", 5400.0),
])
def test_times(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["", "-5", "abc", "1e3", "inf", "nan", "3:70", "1:60:00", "1:2:3:4", "12:"])
def test_not_times(text):
    with pytest.raises(ValueError, match="is not a time"):
        parse_time(text)


def test_spans():
    assert parse_spans("190-205,1022.5-1040") == [(190.0, 205.0), (1022.5, 1040.0)]
    assert parse_spans("00:03:10-00:03:25") == [(190.0, 205.0)]
    assert parse_spans("1:00:00-1:00:12.25, 5-9") == [(3600.0, 3612.25), (5.0, 9.0)]  # as given, not sorted
    assert parse_spans("0.00049-1.0004") == [(0.0, 1.0)]  # to the millisecond


@pytest.mark.parametrize("text, phrase", [
    ("205-190", "ends before it starts"), ("10-10", "ends before it starts"), ("190", "is not a span"),
    ("1-2-3", "is not a span"), ("1-2,", "is not a span"), ("a-b", "is not a time"),
])
def test_bad_spans(text, phrase):
    with pytest.raises(ValueError, match=phrase):
        parse_spans(text)


def test_overlaps_are_refused_touching_is_not():
    assert check_disjoint([(5, 9), (0, 5)], "film") == [(0, 5), (5, 9)]
    with pytest.raises(SpeakertagError, match=r"film: spans 0-6 s and 5-9 s overlap"):
        check_disjoint([(5, 9), (0, 6)], "film")


@pytest.fixture
def here(tmp_path):
    """tmp_path as the working folder, with a film and a folder of clips in it."""
    (tmp_path / "film.mkv").write_bytes(b"x")
    (tmp_path / "clips").mkdir()
    old = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


def test_sources_split_into_files_and_spans(here):
    files, films = split_sources(["clips", "film.mkv@190-205,00:17:02-00:17:20", "film.mkv@10-20",
                                  here / "film.mkv"], "alice")
    assert files == [Path("clips"), here / "film.mkv"]
    # one entry per recording, its spans from every argument, sorted
    assert films == [FilmSpans(Path("film.mkv"), ((10.0, 20.0), (190.0, 205.0), (1022.0, 1040.0)))]


def test_a_path_that_exists_is_a_file_never_spans(here):
    (here / "take@1-2.wav").write_bytes(b"x")
    files, films = split_sources(["take@1-2.wav"], "alice")
    assert [str(f) for f in files] == ["take@1-2.wav"] and films == []
    # a path with an @ that does not exist is a missing file, as any other
    files, films = split_sources(["nope.wav"], "alice")
    assert [str(f) for f in files] == ["nope.wav"] and films == []


def test_spans_file(here):
    (here / "spans.txt").write_text("190\t205\talice\n300\t310\tbob\n1022.5\t1040\talice\n")
    (here / "spans.csv").write_text("start,end\n5,9\n1,3\n")
    _, films = split_sources(["film.mkv@spans.txt"], "alice")
    assert films[0].spans == ((190.0, 205.0), (1022.5, 1040.0))  # alice's rows
    _, films = split_sources(["film.mkv@spans.csv", "film.mkv@20-30"], "alice")
    assert films[0].spans == ((1.0, 3.0), (5.0, 9.0), (20.0, 30.0))  # no labels: every row
    with pytest.raises(SpeakertagError, match="no rows for the voice 'carol'"):
        split_sources(["film.mkv@spans.txt"], "carol")


@pytest.mark.parametrize("item, phrase", [
    ("missing.mkv@1-20", "no such file: missing.mkv"),
    ("clips@1-20", "clips is a folder"),
    ("film.mkv@205-190", "span 205-190 ends before it starts"),
    ("film.mkv@1-20,15-30", "film.mkv: spans 1-20 s and 15-30 s overlap"),
    ("film.mkv@3:70-4:00", "'3:70' is not a time"),
    ("film.mkv@nospans.txt", "is neither spans START-END"),
])
def test_bad_sources(here, item, phrase):
    with pytest.raises(SpeakertagError, match=phrase):
        split_sources([item], "alice")


def test_overlaps_across_arguments(here):
    with pytest.raises(SpeakertagError, match="overlap"):
        split_sources(["film.mkv@10-20", "./film.mkv@19-25"], "alice")


# --- label files: one reader (read_labels) for refine, train and evaluate ------------------------

def test_one_reader_for_rttm_audacity_and_csv(tmp_path):
    from speakertag.spans import read_labels

    files = {"a.rttm": "SPEAKER f 1 1.0 1.5 <NA> <NA> alice <NA> <NA>\nLEXEME f 1 0 1 x\n",
             "a.labels.txt": "1.0\t2.5\talice\n\\\t100\t2000\n",
             "a.csv": "\ufeffstart,end,score,label\n1.0,2.5,0.9,alice\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        assert [(r.start_s, r.end_s, r.label) for r in read_labels(tmp_path / name)] == [(1.0, 2.5, "alice")], name
    (tmp_path / "bare.csv").write_text("# a comment\n\n1,2\n3,4,0.7\n")
    assert [r.label for r in read_labels(tmp_path / "bare.csv")] == [None, None]
    (tmp_path / "empty.csv").write_text("start,end\n")
    assert read_labels(tmp_path / "empty.csv") == []  # evaluate: nothing detected; refine and train refuse it


@pytest.mark.parametrize("text, phrase", [
    ("1,1\n", "line 1: bad segment"), ("2,1\n", "line 1: bad segment"), ("-1,2\n", "line 1: bad segment"),
    ("1,nan\n", "line 1: bad segment"), ("1,2\nx,y\n", "line 2: expected start and end"),
])
def test_label_file_errors_are_one_line_and_both_kinds(tmp_path, text, phrase):
    from speakertag.spans import read_labels

    path = tmp_path / "labels.csv"
    path.write_text(text)
    for kind in (SpeakertagError, ValueError):  # refine and train catch the one, evaluate the other
        with pytest.raises(kind, match=phrase) as e:
            read_labels(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value)
