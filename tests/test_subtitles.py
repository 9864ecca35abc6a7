"""Subtitle files: parsing, the labelling rule, round trips, and a real run on the example film."""

import subprocess
import sys

import pytest

from speakertag.segments import Segment
from speakertag.subtitles import parse, render, speakers

SRT = ("1\r\n00:00:01,000 --> 00:00:04,000\r\n<i>Hello</i> there.\r\nSecond line.\r\n\r\n"
       "2\r\n00:00:05,500 --> 00:00:07,250\r\nWho's there?\r\n\r\n"
       "3\r\n00:01:02,000 --> 00:01:03,000\r\nAnd you & me\r\n")
VTT = ("WEBVTT - a film\n\nNOTE made by hand\n\nSTYLE\n::cue { color: yellow }\n\n"
       "intro\n00:01.000 --> 00:04.000 align:left\nHello there.\n\n"
       "00:00:05.500 --> 00:00:07.250\nWho's there?\n\n"
       "01:02.000 --> 01:03.000\n<v Bob>And you</v>\n")


def test_parse_reads_times_and_text():
    srt, vtt = parse(SRT, "srt"), parse(VTT, "vtt")
    for subs in (srt, vtt):
        assert [(c.start_s, c.end_s) for c in subs.cues] == [(1.0, 4.0), (5.5, 7.25), (62.0, 63.0)]
    assert [srt.lines[i] for i in srt.cues[0].text_lines] == ["<i>Hello</i> there.\r\n", "Second line.\r\n"]
    with pytest.raises(ValueError, match="WEBVTT"):
        parse("00:01.000 --> 00:02.000\nhi\n", "vtt")


@pytest.mark.parametrize("text, fmt", [(SRT, "srt"), (VTT, "vtt"), ("\ufeff" + SRT, "srt")])
def test_round_trip_keeps_every_byte_of_untouched_cues(text, fmt):
    subs = parse(text, fmt)
    assert render(subs, [None] * len(subs.cues), fmt) == text
    labelled = render(subs, [None, "alice", None], fmt)
    assert labelled == text.replace("Who's there?", "ALICE: Who's there?")


def test_conversion_keeps_the_text():
    srt = parse(SRT, "srt")
    vtt = render(srt, ["bob & co", None, None], "vtt")
    assert vtt.startswith("WEBVTT\r\n\r\n")
    back = parse(vtt, "vtt")
    assert [(c.start_s, c.end_s) for c in back.cues] == [(c.start_s, c.end_s) for c in srt.cues]
    assert "BOB &amp; CO: <i>Hello</i> there.\r\nSecond line.\r\n" in vtt
    srt2 = render(parse(VTT, "vtt"), [None] * 3, "srt")
    assert srt2.startswith("1\n00:00:01,000 --> 00:00:04,000\nHello there.\n\n2\n")
    assert [(c.start_s, c.end_s) for c in parse(srt2, "srt").cues] == [(1.0, 4.0), (5.5, 7.25), (62.0, 63.0)]


def test_a_voice_labels_a_cue_it_covers_half_of():
    cues = parse(SRT, "srt").cues  # 1-4 s, 5.5-7.25 s, 62-63 s
    segs = [Segment(0.0, 2.4, 0.9, "alice"), Segment(2.6, 3.5, 0.9, "bob"), Segment(6.3, 9.0, 0.9, "bob"),
            Segment(61.0, 62.5, 0.9, "alice")]
    assert speakers(cues, segs, 0.5) == [None, "bob", "alice"]  # alice 1.4 of 3 s, bob 0.95 of 1.75 s
    assert speakers(cues, segs, 0.4) == ["alice", "bob", "alice"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "speakertag", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow  # the example film tagged in a process
def test_subtitles_of_the_example_film(tiny_model_dir, example, tmp_path):
    """Cues inside the target's speech (reference 50.96-69.09 s, 203.50-214.05 s) get its name;
    cues where nobody the model knows speaks stay as they were."""
    srt = ("1\n00:00:55,000 --> 00:00:58,000\nFirst target line.\n\n"
           "2\n00:00:20,000 --> 00:00:22,000\nSomebody else.\n\n"
           "3\n00:03:25,000 --> 00:03:28,500\nTarget again,\nin two lines.\n\n"
           "4\n00:04:00,000 --> 00:04:03,000\nMusic?\n")
    (tmp_path / "film.srt").write_text(srt)
    out = tmp_path / "film.speakers.vtt"
    r = run_cli("subtitles", example / "movie01.mp4", tmp_path / "film.srt", "--model", tiny_model_dir,
                "--out", out, "-q")
    assert r.returncode == 0, r.stderr
    assert "2 of 4 cues labelled" in r.stderr
    assert (tmp_path / "film.srt").read_text() == srt
    text = out.read_text()
    assert text.startswith("WEBVTT\n")
    assert "TINY: First target line.\n" in text and "TINY: Target again,\nin two lines.\n" in text
    assert "\nSomebody else.\n" in text and "\nMusic?\n" in text
    r = run_cli("subtitles", example / "movie01.mp4", tmp_path / "film.srt", "--model", tiny_model_dir,
                "--out", tmp_path / "film.srt")
    assert r.returncode == 1 and "is an input" in r.stderr and "Traceback" not in r.stderr
