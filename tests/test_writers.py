import csv
import html
import io
import json
import re
from pathlib import Path

import pytest

from speakertag.segments import Segment
from speakertag.writers import FORMATS, SUFFIX, format_of, format_timestamp, render

META = dict(input_path="/films/My Film.mkv", voices=[{"name": "alice", "model": "models/voice", "threshold": 0.62}])
ONE_LABEL = [Segment(0.0, 1.2345, 0.9), Segment(186.5, 192.0, 0.83), Segment(3725.0456, 3731.9994, 0.7071)]
TWO_LABELS = ONE_LABEL[:2] + [Segment(4000.001, 4010.5, 0.5, label="Tom & Jerry")]


# ---- small strict parsers, one per format: each returns [(start_s, end_s, label or None)] ----

def _seconds(clock: str) -> float:
    h, m, s = clock.replace(",", ".").split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def parse_text(text):
    rx = re.compile(r"(\d\d:\d\d:\d\d\.\d) - (\d\d:\d\d:\d\d\.\d)  score (\d\.\d\d)(?:  (.+))?")
    return [(_seconds(m[1]), _seconds(m[2]), m[4]) for m in map(rx.fullmatch, text.splitlines(keepends=False))]


def parse_json(text):
    doc = json.loads(text)
    assert set(doc) == {"input", "voices", "segments"}
    assert (doc["input"], doc["voices"]) == (META["input_path"], META["voices"])
    assert all(set(s) == {"start", "end", "score", "label"} for s in doc["segments"])
    return [(s["start"], s["end"], s["label"]) for s in doc["segments"]]


def parse_csv(text):
    header, *rows = csv.reader(io.StringIO(text))
    assert header in (["start", "end", "score"], ["start", "end", "score", "label"])
    assert all(len(r) == len(header) for r in rows)
    return [(float(r[0]), float(r[1]), r[3] if len(r) > 3 else None) for r in rows]


def parse_rttm(text):
    out = []
    for line in text.splitlines():
        kind, file_id, chan, start, dur, na1, na2, label, na3, na4 = line.split(" ")
        assert (kind, file_id, chan, na1, na2, na3, na4) == ("SPEAKER", "My_Film", "1", "<NA>", "<NA>", "<NA>", "<NA>")
        out.append((float(start), float(start) + float(dur), label))
    return out


def _cues(blocks, sep):
    out = []
    for block in blocks:
        timing, cue_text = block.split("\n")
        m = re.fullmatch(rf"(\d\d:\d\d:\d\d{sep}\d\d\d) --> (\d\d:\d\d:\d\d{sep}\d\d\d)", timing)
        label = re.fullmatch(r"(.+) \(\d\.\d\d\)", cue_text)[1]
        out.append((_seconds(m[1]), _seconds(m[2]), label))
    return out


def parse_srt(text):
    if not text:
        return []
    assert text.endswith("\n\n")
    blocks = text[:-2].split("\n\n")
    assert [b.split("\n", 1)[0] for b in blocks] == [str(i) for i in range(1, len(blocks) + 1)]
    return _cues([b.split("\n", 1)[1] for b in blocks], ",")


def parse_vtt(text):
    assert text.startswith("WEBVTT\n\n") and text.endswith("\n\n")
    body = text[len("WEBVTT\n\n"):-2]
    return [(s, e, html.unescape(label)) for s, e, label in _cues(body.split("\n\n") if body else [], r"\.")]


def parse_audacity(text):
    out = []
    for line in text.splitlines():
        start, end, label = line.split("\t")
        assert re.fullmatch(r"\d+\.\d{6}", start) and re.fullmatch(r"\d+\.\d{6}", end)
        out.append((float(start), float(end), label))
    return out


PARSERS = dict(text=parse_text, json=parse_json, csv=parse_csv, rttm=parse_rttm, srt=parse_srt, vtt=parse_vtt,
               audacity=parse_audacity)
TOLERANCE_S = dict(text=0.05)  # the text format shows tenths of a second; every other format keeps ms


def test_formats_and_suffixes():
    assert set(FORMATS) == set(PARSERS) == set(SUFFIX)
    assert SUFFIX["audacity"] == ".labels.txt" and SUFFIX["rttm"] == ".rttm"


@pytest.mark.parametrize("name, fmt", [("film.csv", "csv"), ("a.b/Film.JSON", "json"), ("film.rttm", "rttm"),
                                       ("film.labels.txt", "audacity"), ("film.txt", "text"), ("film.srt", "srt"),
                                       ("film.vtt", "vtt"), ("film.xml", None), ("film", None)])
def test_format_of_an_output_name(name, fmt):
    assert format_of(Path(name)) == fmt


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("segments", [ONE_LABEL, TWO_LABELS], ids=["one_label", "two_labels"])
def test_round_trip(fmt, segments):
    parsed = PARSERS[fmt](render(fmt, segments, **META))
    assert len(parsed) == len(segments)
    several = len({s.label for s in segments}) > 1
    for (start_s, end_s, label), seg in zip(parsed, segments):
        assert start_s == pytest.approx(seg.start_s, abs=TOLERANCE_S.get(fmt, 0.001))
        assert end_s == pytest.approx(seg.end_s, abs=TOLERANCE_S.get(fmt, 0.001))
        if fmt == "rttm":
            assert label == seg.label.replace(" ", "_")
        elif fmt in ("text", "csv") and not several:
            assert label is None  # one voice: no label column
        else:
            assert label == seg.label


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_segment_list(fmt):
    text = render(fmt, [], **META)
    assert PARSERS[fmt](text) == []
    if fmt != "json":
        assert text == {"csv": "start,end,score\n", "vtt": "WEBVTT\n\n"}.get(fmt, "")


def test_text_lines():
    assert render("text", ONE_LABEL[1:2], **META) == "00:03:06.5 - 00:03:12.0  score 0.83\n"
    assert render("text", TWO_LABELS, **META).splitlines()[-1] == "01:06:40.0 - 01:06:50.5  score 0.50  Tom & Jerry"


def test_json_rounds_times_to_ms():
    seg = json.loads(render("json", ONE_LABEL, **META))["segments"][2]
    assert seg == {"start": 3725.046, "end": 3731.999, "score": 0.7071, "label": "target"}


def test_json_names_the_films_stretches_without_audio():
    """Gaps (a late start, gaps in the audio's timestamps) are listed in film seconds; a film without any has none."""
    doc = json.loads(render("json", ONE_LABEL, **META, gaps=[(0.0, 29.9363), (95.5, 105.5)]))
    assert doc["gaps"] == [[0.0, 29.936], [95.5, 105.5]]
    assert "gaps" not in json.loads(render("json", ONE_LABEL, **META))
    assert render("csv", ONE_LABEL, **META, gaps=[(0.0, 1.0)]) == render("csv", ONE_LABEL, **META)


def test_rttm_and_vtt_keep_their_syntax():
    seg = [Segment(1.0, 2.0, 0.9, label="Jean Gabin")]
    assert render("rttm", seg, **META) == "SPEAKER My_Film 1 1.000 1.000 <NA> <NA> Jean_Gabin <NA> <NA>\n"
    assert "Tom &amp; Jerry (0.50)" in render("vtt", TWO_LABELS, **META)


def test_format_timestamp():
    assert format_timestamp(186.5) == "00:03:06.5"
    assert format_timestamp(59.96) == "00:01:00.0"
    assert format_timestamp(7200.04) == "02:00:00.0"
    with pytest.raises(ValueError):
        format_timestamp(-1.0)


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown output format 'xml'; choose from: text, json") as e:
        render("xml", ONE_LABEL, **META)
    assert "\n" not in str(e.value)
