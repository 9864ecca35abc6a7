"""Inputs that are still being written: standard input, and a file a recorder is growing.

Both are binary file objects for PyAV. A pipe or a growing file is read front to back, so it
must be in a stream format such as Matroska or MPEG-TS (an MP4 keeps its index at its end: a
piped one is copied to a temporary file first).
str() of each names it in messages.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Callable, Sequence

from .errors import SpeakertagError
from .params import LiveParams
from .signals import Interrupted, interrupted, signals_noted
from .writers import format_timestamp

if TYPE_CHECKING:  # tagging pulls in torch and faiss
    from .segments import Segment
    from .tagging import TagOptions, Voice


def _is_mp4(head: bytes) -> bool:
    """Whether these first bytes open an ISO media file (MP4, MOV, M4A: an 'ftyp' box first)."""
    return len(head) >= 8 and head[4:8] == b"ftyp"


def _spool(head: bytes, f: BinaryIO, live: LiveParams) -> BinaryIO:
    """head and the rest of the pipe f in a temporary file (removed when closed), at the
    start; SpeakertagError, the temporary file gone, where it would pass live.max_spool_bytes,
    leave less than live.spool_reserve_bytes free on its disk, or cannot be written."""
    folder = tempfile.gettempdir()
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - it lives as long as the source reading it
    try:
        limit = min(live.max_spool_bytes, shutil.disk_usage(folder).free - live.spool_reserve_bytes)
        n_bytes = 0
        while chunk := head or f.read(1 << 20):
            head, n_bytes = b"", n_bytes + len(chunk)
            if n_bytes > limit:
                why = (f"more than {live.max_spool_bytes / 2**30:g} GiB" if limit == live.max_spool_bytes else
                       f"more than the free space in {folder} allows")
                raise SpeakertagError(f"standard input: an MP4 piped in is copied to a temporary file first (its "
                                      f"index may be at its end), and this one is {why}: give it as a file, or as "
                                      "a stream (ffmpeg -i FILM -c copy -f matroska -)")
            spool.write(chunk)
        spool.flush()
        spool.seek(0)
        return spool
    except OSError as e:
        spool.close()
        raise SpeakertagError(f"cannot copy standard input (an MP4) to a temporary file in {folder}: "
                              f"{e.strerror or e}") from None
    except BaseException:
        spool.close()
        raise


class StdinSource:
    """Standard input as PyAV reads it: front to back from a pipe; a file redirected to it
    (`< film.mp4`) can be sought in, so any format FFmpeg reads works then. An MP4 piped in
    cannot be read front to back (its index may be at its end): it is first copied to a
    temporary file (on disk, not in memory, within live.max_spool_bytes and the disk's free
    space), so its segments come only once the pipe ends."""

    def __init__(self, stream: BinaryIO | None = None, stop: Callable[[], bool] | None = None,
                 live: LiveParams = LiveParams()):
        self.f, self.stop, self.poll_s = stream or sys.stdin.buffer, stop, live.poll_s
        self.head = b""  # bytes read ahead from a pipe, given out before the rest
        self.spooled = False
        self.fd: int | None = None  # a pipe, read through its descriptor: a wait for data can end on stop()
        if not self.f.seekable():
            with contextlib.suppress(AttributeError, OSError, ValueError):
                mode = os.fstat(self.f.fileno()).st_mode
                if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                    self.fd = self.f.fileno()  # nothing read through self.f yet: its buffer is empty
            self.head = self._read_head(8)
            if _is_mp4(self.head):
                self.f, self.head, self.spooled, self.fd = _spool(self.head, self.f, live), b"", True, None

    def _read_head(self, n: int) -> bytes:
        if self.fd is None:
            return self.f.read(n)
        head = b""
        while len(head) < n and (more := os.read(self.fd, n - len(head))):
            head += more
        return head

    def read(self, n: int = -1) -> bytes:
        """The next bytes, or b"" (the end) once stop() says so: a pipe's read waits for data,
        looking at stop() every live.poll_s (a stalled pipe still stops)."""
        try:
            return self._read(n)
        except Interrupted:  # a second signal, raised inside FFmpeg's read: it would print and drop it
            return b""

    def _read(self, n: int) -> bytes:
        if self.stop and self.stop():
            return b""
        if self.head:
            out, self.head = (self.head, b"") if n < 0 or n >= len(self.head) else (self.head[:n], self.head[n:])
            return out
        if self.fd is None:
            return self.f.read(n)
        while not select.select([self.fd], [], [], self.poll_s)[0]:
            if self.stop and self.stop():
                return b""
        return os.read(self.fd, n if n > 0 else 1 << 16)

    def seekable(self) -> bool:
        return self.f.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def __str__(self) -> str:
        return "standard input"


class GrowingFile:
    """A file that may still grow: at its end, read() waits (polling every poll_s) for more,
    and gives up (returns b"", the end) once the file has not grown for timeout_s seconds.
    stop() (a callable) ends the wait early when it returns True. A file cut shorter than
    what was read, or replaced by another file of its name (a recorder starting anew), ends
    it too, with `cut_short` saying so: reading on would join two recordings."""

    def __init__(self, path: Path, timeout_s: float, poll_s: float, stop: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if not path.is_file():
            raise SpeakertagError(f"no such file: {path}" if not path.exists()
                                  else f"cannot follow {path}: not a regular file")
        try:
            self.f = open(path, "rb")
        except OSError as e:
            raise SpeakertagError(f"cannot read {path}: {e.strerror or e}") from None
        self.path, self.timeout_s, self.poll_s, self.stop, self.clock = path, timeout_s, poll_s, stop, clock
        self.last_growth = clock()
        self.cut_short: str | None = None  # why the file ended before its recorder did, if so

    def read(self, n: int = -1) -> bytes:
        try:
            return self._read(n)
        except Interrupted:  # a second signal, raised inside FFmpeg's read: it would print and drop it
            return b""

    def _read(self, n: int) -> bytes:
        while True:
            if self.cut_short or self._truncated():
                return b""
            data = self.f.read(n)
            if data:
                self.last_growth = self.clock()
                return data
            if self._replaced() or self.clock() - self.last_growth >= self.timeout_s or (self.stop and self.stop()):
                return b""
            time.sleep(self.poll_s)

    def _truncated(self) -> bool:
        """Whether the file is now shorter than what was read of it."""
        size, read = os.fstat(self.f.fileno()).st_size, self.f.tell()
        if size < read:
            self.cut_short = f"was cut short to {size} bytes after {read} had been read"
        return self.cut_short is not None

    def _replaced(self) -> bool:
        """Whether the name now is another file's (this one read to its end)."""
        mine = os.fstat(self.f.fileno())
        try:
            now = os.stat(self.path)
        except OSError:  # removed, not replaced (yet): wait on
            return False
        if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            self.cut_short = "was replaced by another file"
        return self.cut_short is not None

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.f.close()

    def size(self) -> int:
        return os.fstat(self.f.fileno()).st_size

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class LiveRun:
    """What a live run (tag_live) found and read."""
    source: str  # the input, as messages name it
    segments: list  # every segment found, by the time each closed
    duration_s: float  # seconds of audio decoded
    gaps: tuple[tuple[float, float], ...]  # stretches without audio (tagging.TagResult.gaps)
    interrupted: bool  # Ctrl-C ended the input
    cut_short: str | None  # why a followed file ended before its recorder did (a new recording), if so

    def summary(self, out: Path | None) -> str:
        """One line: how many segments in how much audio, and where they were written."""
        return (f"{len(self.segments)} segments in {self.duration_s:.1f} s of {self.source}"
                + (" (interrupted)" if self.interrupted else "") + (f", written to {out}" if out else ""))

    def cut_short_error(self) -> str:
        """Why the run stopped early, for a followed file cut short (a new recording in its file)."""
        return (f"{self.source} {self.cut_short} (a new recording?): stopped at {self.duration_s:.1f} s of audio, "
                "the segments found before are kept; tag the new recording on its own")


def closing_line(segment: Segment, duration_s: float) -> str:
    """A segment as it closes, duration_s seconds into the input: its times, label and delay."""
    return (f"{format_timestamp(segment.start_s)} - {format_timestamp(segment.end_s)}  {segment.label}  "
            f"(closed at {duration_s:.1f} s, {duration_s - segment.end_s:.1f} s after its end)")


def tag_live(film: Path | None, voices: Sequence[Voice], fmt: str, out: Path | None, options: TagOptions | None = None,
             follow_timeout_s: float | None = None, on_closed: Callable[[list[Segment], float], None] | None = None,
             live: LiveParams = LiveParams()) -> LiveRun:
    """Tag standard input (film None) or a file that is still growing (until it has not grown
    for follow_timeout_s), writing each segment to `out` (None: standard output) in format
    `fmt` as it closes (writers.LiveOutput). on_closed(segments, seconds decoded) is called for
    each batch of segments closed. Ctrl-C ends the input and what was found is kept; a second
    one stops at once (Interrupted), the segments already out kept; any other failure takes
    back what this run wrote."""
    import torch

    from .tagging import LiveTagger, TagOptions
    from .writers import LiveOutput, voice_entries

    source = (StdinSource(stop=interrupted, live=live) if film is None
              else GrowingFile(film, follow_timeout_s, live.poll_s, interrupted))
    tagger = LiveTagger(voices, options or TagOptions(), live)
    output = LiveOutput(fmt, out, str(source), len(tagger.voices) > 1)

    def closed(segments: list[Segment]) -> None:
        output.add(segments)
        if on_closed is not None:
            on_closed(segments, tagger.duration_s)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a window or two at a time: threads cost more than they give (4x here)
    try:
        with signals_noted():  # Ctrl-C ends the input: the reader returns "end of file", the loop stops
            for _, windows in tagger.windows(source):
                closed(tagger.add(windows))
                if interrupted():
                    break
        stopped = interrupted()
        closed(tagger.finish())
        output.commit(voice_entries((v.name, "" if v.folder is None else str(v.folder), t)
                                    for v, t in zip(tagger.voices, tagger.thresholds)), tagger.gaps)
    except Interrupted:
        output.keep()
        raise
    except BaseException:
        output.discard()
        raise
    finally:
        torch.set_num_threads(threads)
    return LiveRun(str(source), output.found, tagger.duration_s, tuple(tagger.gaps), stopped,
                   getattr(source, "cut_short", None))
