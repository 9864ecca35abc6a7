"""Corrections: label files, span arithmetic, streaming cuts, and refining a model on the
example film with its ground truth as the "corrected" labels."""

import shutil
import subprocess
import sys
import warnings
from dataclasses import replace

import numpy as np
import pytest

from conftest import train_tiny
from speakertag.errors import SpeakertagError
from speakertag.evaluate import read_reference, score
from speakertag.memory import load_memory, save_memory
from speakertag.model import load_model, shipped_base_dir
from speakertag.refine import (
    RefineOptions,
    cap_spans,
    corrected_spans,
    cut_spans,
    merge_spans,
    read_corrections,
    read_labels,
    refine,
    subtract_spans,
)
from speakertag.tagging import Voice, load_voice, tag

REFINE_STEPS = 10  # enough to show the change, small enough for a CPU test


# ---- label files ----

def test_audacity_labels_pick_the_voice(tmp_path):
    f = tmp_path / "film.labels.txt"
    f.write_text("1.5\t3.0\talice\n\\\t100.0\t2000.0\n2.5\t4.0\talice\n10\t12\tbob\n20\t21\talice\n")
    assert read_corrections(f, "alice") == [(1.5, 4.0), (20.0, 21.0)]  # overlaps joined, bob's row left out


def test_one_label_or_none_means_every_row(tmp_path):
    one = tmp_path / "one.csv"
    one.write_text("start,end,speaker\n1,2,ls_2609\n5,6,ls_2609\n")
    assert read_corrections(one, "tiny") == [(1.0, 2.0), (5.0, 6.0)]
    bare = tmp_path / "bare.txt"
    bare.write_text("1.0\t2.0\n3.0\t4.0\t\n")
    assert read_corrections(bare, "tiny") == [(1.0, 2.0), (3.0, 4.0)]


def test_speakertag_csv_score_column_is_no_label(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("start,end,score\n1.000,2.000,0.8100\n")
    assert read_labels(plain)[0].label is None
    several = tmp_path / "several.csv"
    several.write_text("start,end,score,label\n1.000,2.000,0.8100,alice\n3.000,4.000,0.7000,bob\n")
    assert read_corrections(several, "bob") == [(3.0, 4.0)]
    headless = tmp_path / "headless.csv"
    headless.write_text("1,2,0.9,alice\n3,4,bob\n")
    assert [r.label for r in read_labels(headless)] == ["alice", "bob"]


@pytest.mark.parametrize("text, phrase", [
    ("", "holds no segments"),
    ("start,end\n", "holds no segments"),
    ("1\t2\talice\n5\t4\talice\n", "line 2: bad segment"),
    ("1\t1\talice\n", "line 1: bad segment"),
    ("-1,2\n", "line 1: bad segment"),
    ("1,2\nnot,numbers\n", "line 2: expected start and end"),
    ("1\t2\tbob\n3\t4\tcarol\n", "no rows for the voice 'alice'"),
])
def test_bad_label_files(tmp_path, text, phrase):
    f = tmp_path / "labels.txt"
    f.write_text(text)
    with pytest.raises(SpeakertagError, match=phrase):
        read_corrections(f, "alice")


def test_missing_label_file(tmp_path):
    with pytest.raises(SpeakertagError, match="no such labels file"):
        read_labels(tmp_path / "nope.txt")


def test_selection_without_the_voice_among_several_labels():
    from speakertag.refine import LabelRow
    rows = [LabelRow(0, 1, "a", 1), LabelRow(2, 3, None, 2)]
    assert corrected_spans(rows, "x") == [(0, 1), (2, 3)]  # one label: the file is for this voice


# ---- spans ----

def test_span_arithmetic():
    assert merge_spans([(5, 6), (1, 3), (2, 4)]) == [(1, 4), (5, 6)]
    assert subtract_spans([(0, 10), (12, 14)], [(2, 3), (5, 13)]) == [(0, 2), (3, 5), (13, 14)]
    assert subtract_spans([(0, 1)], []) == [(0, 1)]
    assert subtract_spans([(0, 1)], [(-1, 2)]) == []
    # highest priority first, the last one cut to fit, returned in time order
    assert cap_spans([(0, 4), (10, 12), (20, 30)], [1.0, 3.0, 2.0], 7.0) == [(10, 12), (20, 25)]


def test_cut_spans_streams_and_stops_early():
    rate = 10
    read = []

    def blocks():
        for i in range(100):  # 100 blocks of 1 s
            read.append(i)
            yield np.arange(i * rate, (i + 1) * rate, dtype=np.float32)

    parts = cut_spans(blocks(), [(0.5, 1.2), (2.94, 3.06), (5.0, 7.0)], rate)
    assert [p.tolist() for p in parts[:2]] == [list(range(5, 12)), [29, 30]]
    assert parts[2].tolist() == list(range(50, 70))
    assert read == list(range(7))  # nothing decoded after the last span


# ---- refining the example film ----

@pytest.fixture(scope="module")
def start_model(tmp_path_factory):
    """What a user refines: the shipped base fine-tuned for 4 steps on a few of the example clips
    (the example film's F1 about 0.96). A 4-step encoder from scratch is no such start: its
    scores on a film rise by about 0.2 once the film's own windows are in its memory, so the
    threshold the film gives with them left out (what it says of other films) does not fit
    the film itself (docs/experiments.md)."""
    root = tmp_path_factory.mktemp("refine")
    return train_tiny(root / "model", root / "clips", base=load_model(shipped_base_dir()))


@pytest.fixture(scope="module")
def refined(start_model, example):
    """(voice before, model after, memory after, report, corrected spans)."""
    before = load_voice(start_model)
    spans = read_corrections(example / "ref" / "movie01.target.csv", before.memory.name)
    model, memory, report = refine(before.model, before.memory, example / "movie01.mp4", spans,
                                   RefineOptions(steps=REFINE_STEPS))
    return before, model, memory, report, spans


@pytest.mark.slow  # trains a model from the shipped base, then refines it
def test_refine_changes_model_memory_and_history(refined):
    before, model, memory, report, spans = refined
    assert report.encoder == "fine-tuned" and report.kept_why == ""
    assert model.fingerprint != before.model.fingerprint
    assert memory.model_fingerprint == model.fingerprint
    assert len(memory.embeddings) > len(before.memory.embeddings)
    assert len(memory.negatives) > len(before.memory.negatives)
    entry = model.meta["history"][-1]
    assert entry["action"] == "refine" and entry["film"].endswith("movie01.mp4")
    assert entry["steps"] == REFINE_STEPS
    assert entry["positive_s"] == pytest.approx(sum(e - s for s, e in spans), abs=0.01)
    assert entry["false_alarm_s"] == pytest.approx(report.false_alarm_s, abs=0.01) and entry["false_alarm_s"] > 0
    assert "time" in entry
    assert entry["threshold_from"] == "film" and memory.threshold == report.film_calibration.threshold
    assert model.meta["history"][:-1] == before.model.meta["history"]  # the training's entry stays
    film = memory.info["films"][-1]
    assert [tuple(s) for s in film["positive_spans"]] == [(round(s, 3), round(e, 3)) for s, e in spans]
    assert memory.info["positive_clips"] == before.memory.info["positive_clips"]


@pytest.mark.slow  # trains a model from the shipped base, then refines it
def test_refine_improves_tagging_of_the_corrected_film(refined, example):
    _, model, memory, report, _ = refined
    reference = read_reference(example / "ref" / "movie01.target.csv")
    after = tag(example / "movie01.mp4", Voice(model, memory))
    m_before = score(reference, report.detected_spans)
    m_after = score(reference, [(s.start_s, s.end_s) for s in after.segments])
    print(f"F1 {m_before.f1:.3f} -> {m_after.f1:.3f}, false alarm {m_before.false_alarm_s:.1f} -> "
          f"{m_after.false_alarm_s:.1f} s, recall {m_before.recall:.3f} -> {m_after.recall:.3f}")
    assert m_after.f1 >= min(m_before.f1 + 0.2, 0.95)  # a base that starts high can only get near 1
    assert m_after.false_alarm_s <= 0.5 * m_before.false_alarm_s
    assert m_after.recall >= 0.8


@pytest.mark.slow  # trains a model from the shipped base, then refines it
def test_refine_refuses_segments_outside_the_film(start_model, example):
    v = load_voice(start_model)
    with pytest.raises(SpeakertagError, match="outside the film"):
        refine(v.model, v.memory, example / "movie01.mp4", [(10.0, 20.0), (400.0, 410.0)])


# ---- the command ----

def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "speakertag", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow  # trains a model from the shipped base, then refines it
def test_cli_refine_in_place(start_model, example, tmp_path):
    """In place, with the training clips gone: the encoder is kept and the command says so."""
    d = tmp_path / "alice"
    shutil.copytree(start_model, d)
    (d / "notes.txt").write_text("kept\n")
    mem = load_memory(d)
    save_memory(replace(mem, info={**mem.info, "positive_clips": [str(tmp_path / "gone.flac")]}), d)
    labels = tmp_path / "fixed.labels.txt"
    labels.write_text("50.961\t69.091\ttiny\n203.496\t214.051\ttiny\n100\t110\tsomeone else\n")
    r = run_cli("refine", "--model", d, "--film", example / "movie01.mp4", "--labels", labels, "-q")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "encoder kept" in r.stdout and "gone" in r.stdout
    assert f"model written to {d}" in r.stdout
    v = load_voice(d)  # model and memory belong together
    assert v.model.fingerprint == load_model(start_model).fingerprint  # the stored embeddings stay valid
    entry = v.model.meta["history"][-1]
    assert entry["action"] == "refine" and entry["encoder"] == "kept" and entry["steps"] == 0
    # old entries untouched, the film's windows added (clean + degraded copies)
    assert np.array_equal(v.memory.embeddings[:len(mem.embeddings)], mem.embeddings)
    assert len(v.memory.embeddings) > len(mem.embeddings) and len(v.memory.negatives) > len(mem.negatives)
    assert v.memory.info["films"][-1]["positive_spans"] == [[50.961, 69.091], [203.496, 214.051]]
    assert (d / "notes.txt").read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice", "fixed.labels.txt"]  # no temporary folders


@pytest.mark.slow  # trains a model from the shipped base, then refines it
@pytest.mark.parametrize("labels, phrase", [
    (None, "no such labels file"),
    ("1\t2\tbob\n3\t4\tcarol\n", "no rows for the voice 'tiny'"),
    ("10\t20\ttiny\n400\t410\ttiny\n", "outside the film"),
    ("10\t20\ttiny\n30\t25\ttiny\n", "line 2: bad segment"),
])
def test_cli_refine_bad_labels(start_model, example, tmp_path, labels, phrase, monkeypatch, capsys):
    """The command's entry point, in this process (a subprocess each would mostly import torch)."""
    from speakertag import cli, signals

    monkeypatch.setattr(signals, "install", lambda: None)  # leave pytest's handlers alone
    f = tmp_path / "labels.txt"
    if labels is not None:
        f.write_text(labels)
    out = tmp_path / "out"
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_:
        cli.main(["refine", "--model", str(start_model), "--film", str(example / "movie01.mp4"),
                  "--labels", str(f), "--out", str(out), "-q"])
    assert exit_.value.code == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == ""
    assert len(lines) == 1 and lines[0].startswith("speakertag: error: ") and phrase in lines[0], captured.err
    assert not out.exists()
    assert load_model(start_model).meta["history"][-1]["action"] == "fine-tune"  # untouched
