"""request.TagRequest: the options of `tag` that do not go together, and which run serves them."""

from pathlib import Path

import pytest

from speakertag.errors import SpeakertagError, UsageError, failure
from speakertag.request import TagRequest, check_refine_out
from speakertag.signals import Interrupted


def test_one_film_to_stdout_or_a_file(tmp_path):
    film = tmp_path / "film.wav"
    r = TagRequest((film,))
    assert not r.live and r.output is None and r.format == "text" and r.outputs == []
    r = TagRequest((film,), out=tmp_path / "film.rttm", report=tmp_path / "film.html")
    assert r.format == "rttm" and r.outputs == [tmp_path / "film.rttm", tmp_path / "film.html"]
    assert TagRequest((film,), out=Path("-"), fmt="json").output is None


def test_live_input():
    r = TagRequest((Path("-"),))
    assert r.stdin and r.live and r.outputs == []
    assert TagRequest((Path("rec.ts"),), follow=True).live


@pytest.mark.parametrize("kwargs, phrase", [
    (dict(films=(Path("-"), Path("a.wav"))), "live input"),
    (dict(films=(Path("-"),), follow=True), "live input"),
    (dict(films=(Path("a.wav"),), follow=True, exclusive=True), "live input"),
    (dict(films=(Path("a.wav"),), report_audio="embed"), "--report-audio needs --report"),
    (dict(films=(Path("a.wav"), Path("b.wav")), plot=Path("p.png"), out_dir=Path("o")), "single input file"),
    (dict(films=(Path("a.wav"),), scores=Path("s.txt")), "must end in .csv or .npz"),
    (dict(films=(Path("a.wav"),), out=Path("x.json"), report=Path("x.json")), "different files"),
    (dict(films=(Path("a.wav"),), out=Path("x.json"), out_dir=Path("o")), "exclude each other"),
    (dict(films=(Path("a.wav"), Path("b.wav"))), "need --out-dir"),
    (dict(films=(Path("a.wav"),), engine="ray"), "--engine ray needs --out-dir"),
    (dict(films=(Path("a.wav"),), ray_address="auto"), "--ray-address needs --engine ray"),
    (dict(films=(Path("a.wav"),), out_dir=Path("o"), engine="ray", jobs=2), "--jobs is for --engine local"),
])
def test_options_that_do_not_go_together(kwargs, phrase):
    with pytest.raises(UsageError, match=phrase.replace(".", r"\.")):
        TagRequest(**kwargs)


def test_a_folder_needs_out_dir(tmp_path):
    with pytest.raises(UsageError, match="a folder need --out-dir"):
        TagRequest((tmp_path,))
    assert TagRequest((tmp_path,), out_dir=tmp_path / "tags", fmt="csv").format == "csv"


def test_refine_out_needs_a_model_folder(tmp_path):
    with pytest.raises(SpeakertagError, match="no such model folder"):
        check_refine_out(tmp_path / "missing", None, tmp_path / "f.wav", tmp_path / "l.txt")
    check_refine_out(tmp_path, tmp_path, tmp_path / "f.wav", tmp_path / "l.txt")  # in place


def test_failure_line_and_exit_code():
    assert failure(Interrupted()) == ("speakertag: interrupted", 130)
    assert failure(KeyboardInterrupt()) == ("speakertag: interrupted", 130)
    assert failure(SpeakertagError("bad input")) == ("speakertag: error: bad input", 1)
    assert failure(FileNotFoundError(2, "No such file or directory", "x.wav")) == (
        "speakertag: error: No such file or directory: x.wav", 1)
    line, code = failure(ZeroDivisionError("division by zero"))
    assert code == 2 and line.startswith("speakertag: internal error: ZeroDivisionError: division by zero")
