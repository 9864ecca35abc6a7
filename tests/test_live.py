"""Live input: a stream on standard input and a file that is still being written."""

import csv
import io
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest

from speakertag.live import GrowingFile

CELL_S = 0.4992  # one hop-long cell


def remux_to_matroska(src: Path, dst: Path) -> Path:
    """The audio of src in a Matroska file (no re-encoding): a format read front to back."""
    with av.open(str(src)) as i, av.open(str(dst), "w", format="matroska") as o:
        s = i.streams.audio[0]
        out = o.add_stream_from_template(s)
        for packet in i.demux(s):
            if packet.dts is not None:
                packet.stream = out
                o.mux(packet)
    return dst


@pytest.fixture(scope="module")
def film_mkv(example, tmp_path_factory) -> Path:
    return remux_to_matroska(example / "movie01.mp4", tmp_path_factory.mktemp("live") / "movie01.mkv")


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "speakertag", *map(str, args)]


def read_csv(text: str) -> list[tuple[float, float]]:
    return [(float(r["start"]), float(r["end"])) for r in csv.DictReader(io.StringIO(text))]


def assert_within_a_cell(live: list[tuple[float, float]], batch: list[tuple[float, float]]):
    """The same segments, or a segment split in two by at most one cell."""
    assert live and batch
    joined = []
    for s, e in live:
        if joined and s - joined[-1][1] <= CELL_S + 1e-3:
            joined[-1] = (joined[-1][0], e)
        else:
            joined.append((s, e))
    assert len(joined) == len(batch), (live, batch)
    for (s, e), (bs, be) in zip(joined, batch):
        assert abs(s - bs) <= CELL_S + 1e-3 and abs(e - be) <= CELL_S + 1e-3, (live, batch)


@pytest.mark.slow  # processes of their own
def test_a_stream_on_stdin_gives_the_segments_of_the_file(tiny_model_dir, example, film_mkv, tmp_path):
    batch = subprocess.run(cli("tag", example / "movie01.mp4", "--model", tiny_model_dir, "--format", "csv", "-q"),
                           capture_output=True, text=True, timeout=300)
    assert batch.returncode == 0, batch.stderr
    with open(film_mkv, "rb") as f:  # a pipe, as from `cat film.mkv |` or ffmpeg
        cat = subprocess.Popen(["cat"], stdin=f, stdout=subprocess.PIPE)
        live = subprocess.run(cli("tag", "-", "--model", tiny_model_dir, "--format", "csv"), stdin=cat.stdout,
                              capture_output=True, text=True, timeout=300)
        cat.wait()
    assert live.returncode == 0, live.stderr
    assert re.search(r"\d+ segments in 336\.\d s of standard input", live.stderr)
    assert_within_a_cell(read_csv(live.stdout), read_csv(batch.stdout))
    # An MP4 (its index at its end) cannot be read front to back: it is copied aside first,
    # and then tagged as the stream is.
    with open(example / "movie01.mp4", "rb") as f:
        cat = subprocess.Popen(["cat"], stdin=f, stdout=subprocess.PIPE)
        mp4 = subprocess.run(cli("tag", "-", "--model", tiny_model_dir, "--format", "csv", "-q"), stdin=cat.stdout,
                             capture_output=True, text=True, timeout=300)
        cat.wait()
    assert mp4.returncode == 0, mp4.stderr
    assert_within_a_cell(read_csv(mp4.stdout), read_csv(batch.stdout))


def grow(src: Path, dst: Path, bytes_per_s: float, limit: int | None = None, chunk: int = 32768) -> threading.Thread:
    """Write src to dst in chunks from a thread, as a recorder would, up to `limit` bytes."""
    data = src.read_bytes()[:limit]

    def work():
        with open(dst, "ab") as f:
            for i in range(0, len(data), chunk):
                f.write(data[i:i + chunk])
                f.flush()
                time.sleep(chunk / bytes_per_s)

    dst.write_bytes(b"")
    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t


@pytest.mark.slow  # a process of its own
def test_follow_gives_each_segment_soon_after_it_ends(tiny_model_dir, film_mkv, tmp_path):
    """The first 150 s of the film written over about 15 s; each segment is out within 3 s
    of audio after its end, the CSV grows as they come, and the run stops once the file has
    not grown for --follow-timeout."""
    growing, out = tmp_path / "rec.mkv", tmp_path / "rec.csv"
    limit = 150 * film_mkv.stat().st_size // 336
    writer = grow(film_mkv, growing, limit / 15, limit)
    started = time.monotonic()
    r = subprocess.run(cli("tag", growing, "--follow", "--follow-timeout", "2", "--model", tiny_model_dir,
                           "--out", out), capture_output=True, text=True, timeout=300)
    writer.join()
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - started > 15  # it waited for the file to grow
    closed = [(int(h) * 3600 + int(m) * 60 + float(sec), float(at)) for h, m, sec, at in
              re.findall(r" - (\d+):(\d+):(\d+\.\d)  tiny  \(closed at (\d+\.\d) s, [\d.]+ s after its end\)", r.stderr)]
    assert closed, r.stderr
    assert all(at - end <= 3.0 for end, at in closed), r.stderr  # e.g. the segment ending at 70.4 s by 72.9 s
    segments = read_csv(out.read_text())
    assert segments[0] == pytest.approx((50.42, 70.39), abs=0.1)


@pytest.mark.slow  # a process of its own
def test_ctrl_c_keeps_what_was_found(tiny_model_dir, film_mkv, tmp_path):
    growing, out = tmp_path / "rec.mkv", tmp_path / "rec.json"
    grow(film_mkv, growing, 10**7, 80 * film_mkv.stat().st_size // 336)  # 80 s, then the recorder stalls
    # SIGINT at its default action in the child: a background job (CI) ignores it, and speakertag keeps it ignored
    p = subprocess.Popen(cli("tag", growing, "--follow", "--follow-timeout", "600", "--model", tiny_model_dir,
                             "--out", out), stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in p.stderr:  # the first segment closes at about 72 s of audio
        lines.append(line)
        if "closed at" in line:
            break
    time.sleep(1)
    p.send_signal(signal.SIGINT)
    rest = p.stderr.read()
    assert p.wait(timeout=60) == 0, lines + [rest]
    assert "(interrupted)" in rest and "Traceback" not in rest
    import json
    doc = json.loads(out.read_text())
    assert [(s["start"], s["end"]) for s in doc["segments"]][0] == pytest.approx((50.921, 69.892), abs=0.6)


def test_growing_file_waits_then_gives_up(tmp_path):
    f = tmp_path / "rec.ts"
    f.write_bytes(b"abc")
    now = [0.0]
    g = GrowingFile(f, timeout_s=5, poll_s=0, clock=lambda: now[0])
    assert g.read(10) == b"abc"

    def later():  # time passes while the reader waits; the file grows at 3 s
        now[0] += 1
        if now[0] == 3:
            with open(f, "ab") as h:
                h.write(b"de")
        return False

    g.stop = later
    assert g.read(10) == b"de" and now[0] == 3
    assert g.read(10) == b"" and now[0] == 8  # 5 s without growth
    g.close()


@pytest.fixture(scope="module")
def gap_ts(example, tmp_path_factory) -> Path:
    """20 s of the example film (the target from about 6 s on) as MPEG-TS (MP2) with a 10 s gap
    in its audio timestamps after about 5 s, as a broadcast recording that lost the signal."""
    from conftest import write_timed
    from speakertag.audio import load_audio

    rate = 22050
    x = load_audio(example / "movie01.mp4", rate)[45 * rate:65 * rate]
    k = 1152 * 96  # whole MP2 frames
    return write_timed(tmp_path_factory.mktemp("gap") / "gap.ts", [(0.0, x[:k]), (k / rate + 10.0, x[k:])], rate,
                       "mp2")


def test_live_input_follows_the_film_timeline(tiny_model_dir, gap_ts):
    """Piped or followed, a stream with a gap in its timestamps is placed on the film's
    timeline as the file is: the same gap, the segments within a cell of tag()'s."""
    import numpy as np

    from speakertag.live import StdinSource
    from speakertag.tagging import LiveTagger, TagOptions, load_voice, tag

    import torch

    voice = load_voice(tiny_model_dir)
    threshold = float(np.median(tag(gap_ts, voice).tracks[0].window_scores))  # so that there are segments
    batch = tag(gap_ts, voice, TagOptions(threshold=threshold))
    assert len(batch.gaps) == 1 and batch.segments
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI's live input: a window or two at a time
    try:
        with open(gap_ts, "rb") as f:
            cat = subprocess.Popen(["cat"], stdin=f, stdout=subprocess.PIPE)
            for source in (GrowingFile(gap_ts, timeout_s=0.2, poll_s=0.01), StdinSource(cat.stdout)):
                live = LiveTagger(voice, TagOptions(threshold=threshold))
                found = []
                for _, windows in live.windows(source):
                    found += live.add(windows)
                found += live.finish()
                assert live.gaps == list(batch.gaps), source
                assert_within_a_cell([(s.start_s, s.end_s) for s in found],
                                     [(s.start_s, s.end_s) for s in batch.segments])
            cat.wait()
    finally:
        torch.set_num_threads(threads)


def test_tag_live_writes_each_segment_as_it_closes(tiny_model_dir, gap_ts, tmp_path):
    """live.tag_live in this process: a new CSV grows a row per segment (after its header), the
    segments are those given to on_closed, and JSON is written whole, naming the model's folder."""
    import json

    from speakertag.live import tag_live
    from speakertag.tagging import TagOptions, load_voice

    voice, seen = load_voice(tiny_model_dir), []
    out = tmp_path / "live.csv"
    run = tag_live(gap_ts, [voice], "csv", out, TagOptions(threshold=-2.0), 0.2, lambda s, _: seen.extend(s))
    assert run.segments == seen and run.segments and run.gaps and not run.interrupted and run.cut_short is None
    rows = out.read_text().splitlines()
    assert rows[0] == "start,end,score" and len(rows) == 1 + len(run.segments)
    run = tag_live(gap_ts, [voice], "json", tmp_path / "live.json", TagOptions(threshold=-2.0), 0.2)
    doc = json.loads((tmp_path / "live.json").read_text())
    assert doc["voices"][0]["model"] == str(tiny_model_dir) and len(doc["segments"]) == len(run.segments)
    assert doc["gaps"] and doc["input"] == str(gap_ts)


@pytest.mark.slow  # a process of its own: torch is imported again
def test_live_json_names_the_gap(tiny_model_dir, gap_ts):
    import json

    with open(gap_ts, "rb") as f:
        r = subprocess.run(cli("tag", "-", "--model", tiny_model_dir, "--format", "json", "-q"), stdin=f,
                           capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (gap,) = json.loads(r.stdout)["gaps"]
    assert gap == pytest.approx([5.03, 15.03], abs=0.05)
    assert "standard input: no audio at 5.0-15.0 s of the film" in r.stderr


@pytest.mark.slow  # three processes of their own
def test_live_out_never_costs_an_existing_file(tiny_model_dir, film_mkv, tmp_path):
    """issue 34, case 3: a stream that fails after its first segment leaves an existing --out
    file as it was (and no partial file when there was none); one that ends well replaces it."""
    import os

    head = film_mkv.read_bytes()[:80 * film_mkv.stat().st_size // 336]  # the first segment closes at about 72 s
    broken = head + os.urandom(1 << 20)  # then data that cannot be decoded: exit 1
    for fmt, name in (("csv", "rec.csv"), ("rttm", "rec.rttm")):
        out = tmp_path / name
        out.write_text("the user's own lines\n")
        r = subprocess.run(cli("tag", "-", "--model", tiny_model_dir, "--out", out, "--format", fmt), input=broken,
                           capture_output=True, timeout=300)
        assert r.returncode == 1 and b"closed at" in r.stderr, r.stderr  # it failed after a segment
        assert r.stderr.decode().splitlines()[-1].startswith("speakertag: error: cannot decode standard input")
        assert out.read_text() == "the user's own lines\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.csv", "rec.rttm"]  # no temporary file
    new = tmp_path / "new.csv"
    r = subprocess.run(cli("tag", "-", "--model", tiny_model_dir, "--out", new, "-q"), input=broken,
                       capture_output=True, timeout=300)
    assert r.returncode == 1 and not new.exists(), r.stderr
    out = tmp_path / "rec.csv"
    r = subprocess.run(cli("tag", "-", "--model", tiny_model_dir, "--out", out, "-q"), input=head,
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert read_csv(out.read_text())[0] == pytest.approx((50.42, 70.39), abs=0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.csv", "rec.rttm"]


class Pipe(io.BytesIO):
    """Bytes read as from a pipe: front to back only."""

    def seekable(self) -> bool:
        return False


MP4_HEAD = b"\x00\x00\x00\x20ftypisom"  # an 'ftyp' box first: copied to a temporary file


def test_a_piped_mp4_is_copied_within_bounds(tmp_path, monkeypatch):
    """issue 34, case 10: the copy of a piped MP4 stops at its limit and at the disk's free
    space less a reserve, with one clear error, and leaves no temporary file."""
    import shutil
    import tempfile

    from speakertag.errors import SpeakertagError
    from speakertag.live import StdinSource
    from speakertag.params import LiveParams

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    data = MP4_HEAD + bytes(3 << 20)
    with pytest.raises(SpeakertagError, match=r"^standard input: an MP4 piped in is copied to a temporary file "
                                              r"first .+ this one is more than 0\.00195312 GiB: give it as a file"):
        StdinSource(Pipe(data), live=LiveParams(max_spool_bytes=2 << 20))
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(SpeakertagError, match=f"more than the free space in {tmp_path} allows"):
        StdinSource(Pipe(data), live=LiveParams(spool_reserve_bytes=free - (1 << 20)))
    assert list(tmp_path.iterdir()) == []
    source = StdinSource(Pipe(data), live=LiveParams(max_spool_bytes=4 << 20))  # within bounds: copied whole
    assert source.spooled and source.read(len(data) + 1) == data


def test_a_full_disk_while_copying_a_piped_mp4_names_the_folder(tmp_path, monkeypatch):
    """issue 34, case 10: a disk that fills up during the copy is named in one line."""
    import errno
    import tempfile

    from speakertag.errors import SpeakertagError
    from speakertag.live import StdinSource

    class FullDisk(io.BytesIO):
        def write(self, data):
            if self.tell() + len(data) > 1 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(tempfile, "TemporaryFile", FullDisk)
    with pytest.raises(SpeakertagError, match=f"^cannot copy standard input \\(an MP4\\) to a temporary file in "
                                              f"{tmp_path}: No space left on device$"):
        StdinSource(Pipe(MP4_HEAD + bytes(3 << 20)))


def test_growing_file_cut_short_or_replaced_ends_it(tmp_path):
    """issue 34, case 12: a followed file truncated (and written anew), or replaced, is not
    read on into the new recording: its end, with cut_short saying why."""
    import os

    f = tmp_path / "rec.ts"
    f.write_bytes(b"abcdef")
    g = GrowingFile(f, timeout_s=60, poll_s=0)
    assert g.read(4) == b"abcd"
    f.write_bytes(b"XY")  # the recorder starts again: truncated, then written from the start
    assert g.read(10) == b"" and g.cut_short == "was cut short to 2 bytes after 4 had been read"
    assert g.read(10) == b""  # and stays ended
    g.close()

    g = GrowingFile(f, timeout_s=60, poll_s=0)
    assert g.read(1) == b"X"
    new = tmp_path / "new.ts"
    new.write_bytes(b"0123456789")
    os.replace(new, f)
    assert g.read(10) == b"Y"  # what the old file still held comes first
    assert g.read(10) == b"" and g.cut_short == "was replaced by another file"
    g.close()


@pytest.mark.slow  # a process of its own
def test_follow_stops_when_the_file_is_written_anew(tiny_model_dir, film_mkv, tmp_path):
    """issue 34, case 12, through the command line: one error line, the first recording's
    segments kept in --out, nothing of the second joined to them."""
    growing, out = tmp_path / "rec.mkv", tmp_path / "rec.csv"
    head = film_mkv.read_bytes()[:80 * film_mkv.stat().st_size // 336]  # the first segment closes at about 72 s
    growing.write_bytes(head)
    p = subprocess.Popen(cli("tag", growing, "--follow", "--follow-timeout", "60", "--model", tiny_model_dir,
                             "--out", out), stderr=subprocess.PIPE, text=True)
    lines = []
    for line in p.stderr:
        lines.append(line)
        if "closed at" in line:
            break
    growing.write_bytes(head[:100_000])  # truncated and written anew, as a recorder restarting
    rest = p.stderr.read()
    assert p.wait(timeout=120) == 1, lines + [rest]
    error = rest.splitlines()[-1]
    assert error.startswith(f"speakertag: error: {growing} was cut short to 100000 bytes after "), rest
    assert "the segments found before are kept" in error and "Traceback" not in rest
    assert read_csv(out.read_text())[0] == pytest.approx((50.42, 70.39), abs=0.1)


@pytest.mark.slow  # a process of its own
@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGTERM]],
                         ids=["SIGTERM", "SIGINT-then-SIGTERM"])
def test_a_stalled_pipe_stops_on_a_signal(tiny_model_dir, film_mkv, tmp_path, signals):
    """issue 34, case 6: a stream that stalls (the pipe open, no data) stops within seconds of
    a signal, not when the pipe closes; what was found is kept."""
    out = tmp_path / "rec.csv"
    p = subprocess.Popen(cli("tag", "-", "--model", tiny_model_dir, "--out", out), stdin=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=False)
    p.stdin.write(film_mkv.read_bytes()[:80 * film_mkv.stat().st_size // 336])  # then the pipe stalls
    p.stdin.flush()
    lines = []
    for line in p.stderr:  # the first segment closes at about 72 s
        lines.append(line.decode())
        if b"closed at" in line:
            break
    for sig in signals:  # back to back: the second comes while the first is acted on
        p.send_signal(sig)
    try:
        code = p.wait(timeout=15)
    finally:
        p.kill()
        p.stdin.close()
    rest = p.stderr.read().decode()
    assert code in (0, 130), lines + [rest]  # a first signal ends the input (0), a second stops at once (130)
    assert "Traceback" not in rest and ("(interrupted)" in rest or "speakertag: interrupted" in rest), rest
    assert read_csv(out.read_text())[0] == pytest.approx((50.42, 70.39), abs=0.1)
