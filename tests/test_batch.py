"""Batch helpers: output names, options applied to a voice, the skip rule."""

from pathlib import Path

from speakertag.batch import Outcome, Tally, output_paths
from speakertag.tagging import TagOptions, VoiceSpec


def test_output_paths_are_unique_and_ordered(tmp_path):
    inputs = [Path("a/ep1.mkv"), Path("b/ep1.mp4"), Path("c/EP1.ts"), Path("d/ep2.mkv")]
    assert [p.name for p in output_paths(inputs, tmp_path, ".srt")] == ["ep1.srt", "ep1-2.srt", "EP1-3.srt", "ep2.srt"]
    assert all(p.parent == tmp_path for p in output_paths(inputs, tmp_path, ".srt"))


def test_tag_options_apply_to_a_voice(tiny_model_dir):
    (loaded,) = VoiceSpec((tiny_model_dir,)).load()
    voice = TagOptions(min_gap_s=2.5, edge_db=4.0).applied(loaded)
    assert voice.params.min_gap_s == 2.5 and voice.params.edge_db == 4.0
    assert voice.params.min_duration_s == voice.model.params.tag.min_duration_s
    assert voice.folder == tiny_model_dir and TagOptions().applied(loaded).params == loaded.params


# --- the skip rule: an output is up to date when its stamp records this film and these settings

def test_skip_rule(tiny_model_dir, tmp_path):
    import os
    import shutil
    from dataclasses import replace

    from speakertag.batch import film_state, is_up_to_date, run_settings, stamp_path, write_stamp
    from speakertag.io_utils import atomic_write_text
    from speakertag.memory import load_memory, save_memory

    film = tmp_path / "film.wav"  # never decoded here: only its path, size and time count
    film.write_bytes(b"RIFF" + bytes(100))
    out = tmp_path / "tags" / "film.json"
    out.parent.mkdir()
    spec = VoiceSpec((tiny_model_dir,))
    settings = run_settings(spec, "json")
    state = film_state(film)
    assert not is_up_to_date(out, state, settings)  # nothing written yet

    atomic_write_text(out, '{"segments": []}\n')
    assert not is_up_to_date(out, state, settings)  # an output without a stamp: made by someone else
    write_stamp(out, state, settings, '{"segments": []}\n')
    assert stamp_path(out) == tmp_path / "tags" / ".speakertag" / "film.json.stamp"
    assert is_up_to_date(out, state, settings)
    assert is_up_to_date(out, film_state(film), run_settings(spec, "json"))  # same again

    # other options, another model folder, a changed memory: tagged again
    assert not is_up_to_date(out, state, run_settings(spec, "json", TagOptions(threshold=0.5)))
    assert not is_up_to_date(out, state, run_settings(spec, "json", TagOptions(stream=1)))
    assert not is_up_to_date(out, state, run_settings(spec, "json", TagOptions(channels="centre")))
    assert not is_up_to_date(out, state, run_settings(spec, "json", TagOptions(min_gap_s=2.0)))
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    assert not is_up_to_date(out, state, run_settings(VoiceSpec((copy,)), "json"))
    copy_settings = run_settings(VoiceSpec((copy,)), "json")
    save_memory(replace(load_memory(copy), threshold=0.123), copy)
    assert run_settings(VoiceSpec((copy,)), "json") != copy_settings

    # a changed film (time or size), an edited or deleted output, a damaged stamp: tagged again
    os.utime(film, ns=(state["mtime_ns"], state["mtime_ns"] + 1_000_000_000))
    assert not is_up_to_date(out, film_state(film), settings)
    os.utime(film, ns=(state["mtime_ns"], state["mtime_ns"]))
    assert is_up_to_date(out, film_state(film), settings)
    with open(film, "ab") as fh:
        fh.write(b"more")
    assert not is_up_to_date(out, {**state, "size_bytes": state["size_bytes"] + 4}, settings)
    atomic_write_text(out, '{"segments": [], "edited": true}\n')
    assert not is_up_to_date(out, state, settings)
    write_stamp(out, state, settings, out.read_text())
    assert is_up_to_date(out, state, settings)
    stamp_path(out).write_text("{not json")
    assert not is_up_to_date(out, state, settings)
    write_stamp(out, state, settings, out.read_text())
    out.unlink()
    assert not is_up_to_date(out, state, settings)


def test_an_out_dir_in_use_is_refused(tiny_model_dir, tmp_path):
    """issue 34, case 4: a second run on an --out-dir another run holds is refused before any
    film is tagged; a folder made for a run that wrote nothing is not left behind."""
    import os

    import pytest

    from conftest import speech_like, write_audio
    from speakertag.batch import tag_films
    from speakertag.errors import SpeakertagError
    from speakertag.io_utils import folder_lock

    film = write_audio(tmp_path / "film.wav", speech_like(4.0, 16000), 16000)
    out = tmp_path / "runs" / "tags"
    spec = VoiceSpec((tiny_model_dir,))
    with folder_lock(out):  # another run's, held meanwhile
        with pytest.raises(SpeakertagError, match=f"another speakertag run is writing to {out}: wait for it"):
            next(tag_films([film], out, "json", spec))
        assert os.listdir(out) == []
    assert not (tmp_path / "runs").exists()  # made for the run and removed again: nothing written
    (outcome,) = list(tag_films([film], out, "json", spec))
    assert outcome.error is None and sorted(os.listdir(out)) == [".speakertag", "film.json"]
    with folder_lock(out):  # the lock is gone with its run: the next one takes it
        pass


def test_jobs_are_capped_by_cores_and_memory():
    """issue 34, case 9: --jobs lowered to the cores and to what the memory holds, with a note."""
    from speakertag.batch import WORKER_MEMORY_BYTES, usable_jobs

    assert usable_jobs(2, n_cores=4, memory_bytes=None) == (2, None)
    assert usable_jobs(12, n_cores=2, memory_bytes=None) == (2, "--jobs 12 lowered to 2: this machine has 2 CPU cores")
    n, note = usable_jobs(12, n_cores=16, memory_bytes=3 * WORKER_MEMORY_BYTES + 1)
    assert n == 3 and note.startswith("--jobs 12 lowered to 3: 2.5 GB of memory available, a worker needs about 0.8 GB")
    assert usable_jobs(4, n_cores=1, memory_bytes=0)[0] == 1  # never below one
    assert usable_jobs(1)[0] == 1


def test_tally_and_the_line_for_each_outcome(tmp_path):
    import numpy as np

    from speakertag.tagging import TagResult

    done = TagResult("a.mkv", 1.0, 2.0, 0.5, np.zeros(0), [], {}, note="a note")
    outcomes = [Outcome(tmp_path / "a.mkv", tmp_path / "a.srt", result=done),
                Outcome(tmp_path / "b.mkv", tmp_path / "b.srt", skipped=True),
                Outcome(tmp_path / "c.mkv", tmp_path / "c.srt", error=ValueError("bad")),
                Outcome(tmp_path / "d", None, error=PermissionError(13, "Permission denied", str(tmp_path / "d")))]
    tally = Tally()
    for o in outcomes:
        tally.add(o)
    assert tally.failed and tally.summary() == (f"tagged 1 of 3 files (1 up to date, 1 failed, 1 folder could not be "
                                                f"read: {tmp_path / 'd'})")
    assert [o.lines(quiet=True) for o in outcomes] == [
        ["a note"], [], [f"speakertag: error: {tmp_path / 'c.mkv'}: internal error: ValueError: bad"],
        [f"speakertag: error: {tmp_path / 'd'}: cannot read folder (Permission denied)"]]
    assert outcomes[0].lines() == ["a note", f"{tmp_path / 'a.mkv'}: 0 segments written to {tmp_path / 'a.srt'}"]
    assert outcomes[1].lines() == [f"{tmp_path / 'b.mkv'}: skipped, {tmp_path / 'b.srt'} is up to date"]
    assert not Tally().failed and Tally().summary() == "tagged 0 of 0 files"
