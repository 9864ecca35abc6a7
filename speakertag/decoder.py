"""Decoding a long film in a process of its own.

`tagging.tag` decodes on one thread and embeds on another. In one interpreter the two share
the GIL, which PyAV takes back for every decoded frame (a 2-hour film has hundreds of
thousands): on 2 cores, the decoding thread of a 2-hour AC-3 stereo film took 13-14 s
instead of the 8-9 s it takes alone. With the decoding in a child process the film tagged in
9.6-10.1 s, against 10.8-12.2 s (three interleaved pairs); its 5.1 rendition, decoder-bound,
about as fast either way. The child runs the same `audio.source_blocks` and
`audio.to_model_rate` and sends mono float32 blocks through a pipe, and the gaps in the
audio's timestamps that the blocks fill with zeros; a SpeakertagError in the child is raised
again in the parent with its message.

    python -m speakertag.decoder PATH STREAM CHANNELS RATE_HZ [PARENT_PID]

is the child (STREAM "" for the default stream; RATE_HZ 0 for the source rate, mixed to mono
but not resampled: the parent resamples where the decoder itself is the dear part; PARENT_PID:
the child dies with that process, see signals.die_with_parent).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from .audio import Mix, _clean, source_blocks, to_model_rate
from .errors import SpeakertagError
from .signals import die_with_parent

# One message: kind, then for a block (b"B") its number of samples and their rate, for an
# error (b"E") the length of its UTF-8 message and 0; the samples or the message follow. A gap
# (b"G") gives its start and end, microseconds of the film, and nothing follows.
HEADER = struct.Struct("<cqq")
# Films at least this long (or of unknown length) are decoded in a child process: starting it
# costs about 0.4 s, which a film shorter than about 20 minutes does not win back.
MIN_DURATION_S = 1200.0


def _messages(path: Path, stream: int | None, channels: str, rate_hz: int,
              gaps: list[tuple[float, float]]) -> Iterator[tuple[np.ndarray, int]]:
    """Mono float32 blocks and their rate, as the child sends them; the gaps they fill are appended to `gaps`."""
    if rate_hz:
        for block in to_model_rate(source_blocks(path, stream, channels=channels, gaps=gaps), rate_hz, path):
            yield block, rate_hz
    else:
        for block, rate, mix in source_blocks(path, stream, channels=channels, gaps=gaps):
            yield _clean(block, mix.weights), rate


def child(argv: list[str]) -> int:
    """The child's main: decode argv's file and write its messages to stdout."""
    path, stream, channels, rate_hz = Path(argv[0]), int(argv[1]) if argv[1] else None, argv[2], int(argv[3])
    if len(argv) > 4:
        die_with_parent(int(argv[4]))  # a parent killed outright (a stopped batch worker) leaves no decoder
    out = sys.stdout.buffer
    gaps: list[tuple[float, float]] = []
    try:
        try:
            for block, rate in _messages(path, stream, channels, rate_hz, gaps):
                while gaps:
                    start_s, end_s = gaps.pop(0)
                    out.write(HEADER.pack(b"G", round(start_s * 1e6), round(end_s * 1e6)))
                out.write(HEADER.pack(b"B", len(block), rate))
                out.write(np.ascontiguousarray(block, np.float32).data)
        except SpeakertagError as e:
            message = str(e).encode()
            out.write(HEADER.pack(b"E", len(message), 0) + message)
        out.flush()
    except (BrokenPipeError, KeyboardInterrupt):  # the parent stopped reading, or Ctrl-C: it says why
        return 1
    return 0


def _read_exactly(f, n_bytes: int, into: memoryview | None = None) -> memoryview:
    """n_bytes from the pipe f (into `into` when given); fewer only where the child stopped."""
    buf = into if into is not None else memoryview(bytearray(n_bytes))
    got = 0
    while got < n_bytes and (k := f.readinto(buf[got:])):
        got += k
    return buf[:got]


def decoded_in_child(path: str | Path, stream: int | None = None, channels: str = "auto",
                     rate_hz: int | None = None, gaps: list[tuple[float, float]] | None = None) -> Iterator:
    """The blocks of `audio.decode_blocks(path, rate_hz, stream, channels=channels)` (mono
    float32), or with rate_hz None those of `audio.source_blocks` mixed to mono, as
    `to_model_rate` takes them ((1, n), rate, Mix), decoded in a child process; the gaps the
    blocks fill are appended to `gaps` (when given) as decode_blocks does. The child is
    stopped when the generator is closed."""
    cmd = [sys.executable, "-m", "speakertag.decoder", str(path), "" if stream is None else str(stream),
           channels, str(rate_hz or 0), str(os.getpid())]
    # A session of its own: Ctrl-C in a terminal goes to this process alone, which stops the child.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True)
    try:
        while len(header := _read_exactly(proc.stdout, HEADER.size)) == HEADER.size:
            kind, n, rate = HEADER.unpack(header)
            if kind == b"E":
                raise SpeakertagError(bytes(_read_exactly(proc.stdout, n)).decode(errors="replace"))
            if kind == b"G":
                if gaps is not None:
                    gaps.append((n / 1e6, rate / 1e6))
                continue
            block = np.empty(n, np.float32)
            if len(_read_exactly(proc.stdout, 4 * n, memoryview(block).cast("B"))) < 4 * n:
                break
            yield block if rate_hz else (block[None], rate, Mix("average"))
        if proc.wait() != 0:
            raise SpeakertagError(f"cannot decode {path}: the decoding process failed (exit code {proc.returncode})")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.wait()


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
