#!/usr/bin/env python3
"""Fuzz the decode + features path on mutated audio and container bytes.

    pip install -e '.[fuzz]'          # atheris (libFuzzer for Python)
    python scripts/fuzz_decode.py [--seconds 600] [--out DIR] [extra libFuzzer flags]

Seeds are small files written here (WAV 16-bit stereo and float mono, 5.1 WAV, FLAC, OGG,
MP3, MP4/AAC, Matroska with AC-3 5.1, Opus and PCM, MPEG-TS/MP2, raw AAC). An input is one
byte choosing the file name's suffix (which picks soundfile or FFmpeg, and FFmpeg's format
guess) followed by the file's bytes. Each input goes through `audio.probe`,
`audio.decode_blocks` (small blocks, to exercise block joins) and `features.stream_windows`;
decoded samples and features must be finite. The only accepted failure is SpeakertagError;
anything else (another exception, non-finite output, an input taking over SLOW_S, output
on stderr, which would break the CLI's one-line errors) is a finding: printed once per kind (exception type and place), its input saved to
OUT/finding-<n><suffix>, a summary kept in OUT/summary.json. A native crash (a segfault in
FFmpeg or PyAV) ends the run: atheris saves the input as OUT/crash-<sha1> (first byte: the
suffix) and its report is in OUT/stderr-of-last-input.txt. Without atheris, a plain random
mutator (bit flips, byte changes, cuts, splices) runs instead. Not run by CI: the findings
become cases of tests/test_corpus.py.

Runs, findings and fixes so far: docs/experiments.md, "Robustness record".
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np

try:
    import atheris
except ImportError:  # the fallback mutator below needs nothing
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["speakertag"]):
        from speakertag.audio import decode_blocks, probe
        from speakertag.errors import SpeakertagError
        from speakertag.features import stream_windows
        from speakertag.params import AudioParams
else:
    from speakertag.audio import decode_blocks, probe
    from speakertag.errors import SpeakertagError
    from speakertag.features import stream_windows
    from speakertag.params import AudioParams

SUFFIXES = [".wav", ".flac", ".mp3", ".mp4", ".mkv", ".ogg", ".aac", ".ac3", ".ts", ".m4a", ".webm", ".mka"]
SLOW_S = 10.0  # an input of a few kB that takes longer than this is a finding
P = AudioParams()


class Slow(Exception):
    """Raised by the alarm when one input runs longer than SLOW_S."""


class StderrOutput(Exception):
    """Something (a C library) wrote to stderr while reading an input."""


def tone(duration_s: float, rate_hz: int, channels: int = 1) -> np.ndarray:
    """(n, channels) float32 harmonic tone with a little noise."""
    t = np.arange(int(duration_s * rate_hz)) / rate_hz
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 660 * t)
    x = x + 0.01 * np.random.default_rng(0).standard_normal(len(t))
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def encode(fmt: str, codec: str, x: np.ndarray, rate_hz: int, layout: str) -> bytes:
    """Encode (n, channels) float samples with PyAV into an in-memory container."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate_hz, layout=layout)
        fmt_ = s.codec_context.format
        n = s.codec_context.frame_size or 1024
        for i in range(0, len(x), n):
            chunk = np.ascontiguousarray(np.pad(x[i:i + n], ((0, n - len(x[i:i + n])), (0, 0))).T)
            if fmt_.name.startswith("s16"):
                chunk = np.round(chunk * 32767).astype(np.int16)
            elif fmt_.name.startswith("s32"):
                chunk = np.round(chunk * 2 ** 31 * 0.99).astype(np.int32)
            frame = av.AudioFrame.from_ndarray(chunk if fmt_.is_planar else chunk.T.reshape(1, -1),
                                               format=fmt_.name, layout=layout)
            frame.sample_rate, frame.pts = rate_hz, i
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    return buf.getvalue()


def seeds() -> dict[str, bytes]:
    """name -> input (suffix byte + file bytes) of every seed; each well under 20 kB."""
    import soundfile as sf

    def sf_bytes(x, rate_hz, fmt, subtype=None):
        buf = io.BytesIO()
        sf.write(buf, x, rate_hz, format=fmt, subtype=subtype)
        return buf.getvalue()

    files = {
        "pcm16_stereo.wav": sf_bytes(tone(0.3, 16000, 2), 16000, "WAV", "PCM_16"),
        "float_mono.wav": sf_bytes(tone(0.3, 22050), 22050, "WAV", "FLOAT"),
        "six.wav": sf_bytes(tone(0.1, 8000, 6), 8000, "WAV", "PCM_16"),
        "mono.flac": sf_bytes(tone(0.5, 16000), 16000, "FLAC"),
        "mono.ogg": sf_bytes(tone(0.5, 16000), 16000, "OGG", "VORBIS"),
        "mono.mp3": encode("mp3", "libmp3lame", tone(0.5, 22050), 22050, "mono"),
        "aac.mp4": encode("mp4", "aac", tone(0.5, 24000, 2), 24000, "stereo"),
        "ac3_51.mkv": encode("matroska", "ac3", tone(0.2, 48000, 6), 48000, "5.1"),
        "opus.mkv": encode("matroska", "libopus", tone(0.3, 48000), 48000, "mono"),
        "pcm.mkv": encode("matroska", "pcm_s16le", tone(0.1, 16000, 2), 16000, "stereo"),
        "mp2.ts": encode("mpegts", "mp2", tone(0.3, 32000, 2), 32000, "stereo"),
        "raw.aac": encode("adts", "aac", tone(0.3, 16000), 16000, "mono"),
    }
    return {name: bytes([SUFFIXES.index(Path(name).suffix)]) + data for name, data in files.items()}


class Fuzzer:
    def __init__(self, out: Path):
        self.out = out
        self.work = out / "work"  # the input being read, the seeds
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        # What reading an input writes on stderr; after a crash of the process (a native crash
        # in FFmpeg: no Python exception to catch), libFuzzer's report of it is here.
        self.stderr_file = open(out / "stderr-of-last-input.txt", "w+b")
        self.kinds: dict[str, dict] = {}
        self.n_execs = 0
        self.started = time.monotonic()

    def check(self, path: Path) -> None:
        """Probe, decode and featurise one file; SpeakertagError is the only clean failure."""
        try:
            probe(path)
        except SpeakertagError:
            pass
        blocks = []
        try:
            for block in decode_blocks(path, P.sample_rate_hz, block_s=0.25):
                assert block.dtype == np.float32 and block.ndim == 1, f"block {block.dtype} {block.shape}"
                assert np.isfinite(block).all(), "non-finite decoded samples"
                blocks.append(block)
        except SpeakertagError:
            return
        for _, windows in stream_windows(blocks, P, 64):
            assert bool(torch_isfinite(windows)), "non-finite features"

    def one_input(self, data: bytes) -> None:
        if len(data) < 2:
            return
        self.n_execs += 1
        suffix = SUFFIXES[data[0] % len(SUFFIXES)]
        path = self.work / f"input{suffix}"
        path.write_bytes(data[1:])
        signal.alarm(int(SLOW_S))
        saved_stderr = os.dup(2)  # a C library writing to stderr breaks the CLI's one-line errors
        os.dup2(self.stderr_file.fileno(), 2)
        try:
            self.check(path)
        except (Exception, Slow) as e:  # noqa: BLE001 - every other failure is a finding
            self.record(e, suffix, data[1:])
        finally:
            signal.alarm(0)
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            path.unlink(missing_ok=True)
        if self.stderr_file.tell():
            self.stderr_file.seek(0)
            self.record(StderrOutput(self.stderr_file.read().decode(errors="replace").strip()), suffix, data[1:])
            self.stderr_file.seek(0)
            self.stderr_file.truncate()
        if self.n_execs % 200 == 0:
            self.save_summary()

    def record(self, e: BaseException, suffix: str, data: bytes) -> None:
        frames = traceback.extract_tb(e.__traceback__)
        ours = [f for f in frames if "speakertag" in f.filename] or frames
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
        kind = f"{type(e).__name__} at {where}"
        if isinstance(e, StderrOutput):  # one kind per message, whatever its numbers
            kind = "stderr: " + re.sub(r"0x[0-9a-fA-F]+|\d+", "N", str(e).splitlines()[0])[:60]
        if kind in self.kinds:
            self.kinds[kind]["count"] += 1
            return
        file = self.out / f"finding-{len(self.kinds) + 1}{suffix}"
        file.write_bytes(data)
        self.kinds[kind] = {"count": 1, "message": str(e)[:300], "input": str(file),
                            "after_s": round(time.monotonic() - self.started, 1),
                            "traceback": traceback.format_exception(e)[-6:]}
        print(f"\nFINDING {kind}: {str(e)[:200]} -> {file}", flush=True)
        self.save_summary()

    def save_summary(self) -> None:
        (self.out / "summary.json").write_text(json.dumps({
            "seconds": round(time.monotonic() - self.started, 1), "executions": self.n_execs,
            "findings": self.kinds}, indent=1))


def torch_isfinite(windows) -> bool:
    import torch

    return torch.isfinite(windows).all()


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    """One random change: flip bits, set bytes, cut, duplicate or splice with another input."""
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        op = rng.randrange(6)
        if not b:
            break
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif op == 2:
            del b[rng.randrange(1, len(b)) if len(b) > 1 else 1:]
        elif op == 3:
            j = min(len(b), i + rng.randrange(1, 64))
            b[i:i] = b[i:j]
        elif op == 4:
            other = rng.choice(pool)
            b = b[:i] + bytearray(other[rng.randrange(len(other)):])
        else:
            b[i:i + 4] = rng.randbytes(4)
    return bytes(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=600, help="how long to fuzz")
    ap.add_argument("--out", type=Path, default=Path("fuzz-findings"), help="findings and summary.json go here")
    ap.add_argument("--plain", action="store_true", help="use the plain random mutator even if atheris is there")
    args, extra = ap.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fuzzer = Fuzzer(args.out)
    seed_dir = fuzzer.work / "seeds"
    seed_dir.mkdir()
    seed_inputs = seeds()
    for name, data in seed_inputs.items():
        (seed_dir / name).write_bytes(data)
        fuzzer.one_input(data)  # the seeds themselves must pass
    assert not fuzzer.kinds, f"a seed fails: {fuzzer.kinds}"

    def on_alarm(signum, frame):
        raise Slow(f"one input took longer than {SLOW_S:g} s")

    signal.signal(signal.SIGALRM, on_alarm)
    try:
        if atheris is not None and not args.plain:
            print(f"atheris: {args.seconds} s from {len(seed_inputs)} seeds", flush=True)
            atheris.Setup([sys.argv[0], f"-max_total_time={args.seconds}", "-timeout=60", "-rss_limit_mb=6000",
                           f"-artifact_prefix={args.out}/", *extra, str(seed_dir)], fuzzer.one_input)
            atheris.Fuzz()  # exits the process when the time is up (the summary is saved as it goes)
        rng = random.Random(0)
        pool = list(seed_inputs.values())
        print(f"plain mutator: {args.seconds} s from {len(pool)} seeds", flush=True)
        while time.monotonic() - fuzzer.started < args.seconds:
            data = mutate(rng.choice(pool), rng, pool)
            fuzzer.one_input(data)
            if len(pool) < 500 and rng.random() < 0.05:
                pool.append(data)  # no coverage feedback: keep some mutants to mutate further
    finally:
        fuzzer.save_summary()
        shutil.rmtree(fuzzer.work, ignore_errors=True)
    print(json.dumps({"seconds": round(time.monotonic() - fuzzer.started), "executions": fuzzer.n_execs,
                      "findings": {k: v["count"] for k, v in fuzzer.kinds.items()}}, indent=1))


if __name__ == "__main__":
    main()
