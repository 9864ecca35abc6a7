"""Shared fixtures: the committed example task, synthetic audio writers, one tiny trained model.

Generated audio goes to tmp_path (never into the source tree). The tiny model is trained
once per session on a few example clips in a few seconds: good enough to exercise every
stage and file format, not to recognise anyone.
"""

import contextlib
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

EXAMPLE = Path(__file__).resolve().parent.parent / "data" / "example"

# A few example clips, chosen for speed: 3 positive (15 s) and 6 negative (voices, music, noise).
TINY_POSITIVE = ["ls_2609__2609-156975-0001.flac", "ls_2609__2609-156975-0003.flac",
                 "ls_2609__2609-156975-0009.flac"]
TINY_NEGATIVE = ["nonspeech__music_lounge_2.flac", "nonspeech__roomtone_pink.flac",
                 "speech__ast_fr_armelle__fr_vm-nonumber.flac", "speech__fsdd_george__george_digits005.flac",
                 "speech__ls_3005__3005-163389-0001.flac", "speech__lstc_8088__8088-284756-0000.flac"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than about 5 s (deselect with -m 'not slow')")


@pytest.fixture(scope="session")
def example() -> Path:
    """data/example of this checkout: positive/, negative/, movie01.mp4, ref/."""
    assert EXAMPLE.is_dir(), f"example data missing: {EXAMPLE}"
    return EXAMPLE


def sine(duration_s: float, rate_hz: int, freq_hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    """(n,) float32 sine."""
    t = np.arange(int(round(duration_s * rate_hz))) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def noise(duration_s: float, rate_hz: int, amplitude: float = 0.1, seed: int = 0) -> np.ndarray:
    """(n,) float32 white noise."""
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal(int(round(duration_s * rate_hz)))).astype(np.float32)


def speech_like(duration_s: float, rate_hz: int, seed: int = 0) -> np.ndarray:
    """(n,) float32 voiced-sounding signal: a gliding harmonic pitch with syllable-rate
    amplitude modulation and pauses, plus a little noise."""
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * rate_hz))
    t = np.arange(n) / rate_hz
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / rate_hz
    x = sum(np.sin(h * phase) / h for h in range(1, 12) if 120 * h < rate_hz / 2)
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) * (np.sin(2 * np.pi * 0.3 * t) > -0.5)
    x = 0.3 * x * envelope + 0.01 * rng.standard_normal(n)
    return (x / max(1.0, np.abs(x).max() / 0.9)).astype(np.float32)


def write_audio(path: Path, samples: np.ndarray, rate_hz: int, **kwargs) -> Path:
    """Write (n,) or (n, channels) samples with soundfile; returns path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, rate_hz, **kwargs)
    return path


def sparse_silent_wav(path: Path, duration_s: float, rate_hz: int = 8000) -> Path:
    """A 16-bit mono WAV of digital silence, written as a header and a hole (instant, no disk)."""
    n_bytes = int(duration_s * rate_hz) * 2
    header = (b"RIFF" + struct.pack("<I", 36 + n_bytes) + b"WAVEfmt "
              + struct.pack("<IHHIIHH", 16, 1, 1, rate_hz, 2 * rate_hz, 2, 16) + b"data" + struct.pack("<I", n_bytes))
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + n_bytes)
    return path


@pytest.fixture
def write_wav(tmp_path):
    """write_wav(name, samples, rate_hz=22050) -> Path of a file under tmp_path."""
    def write(name: str, samples: np.ndarray, rate_hz: int = 22050, **kwargs) -> Path:
        return write_audio(tmp_path / name, samples, rate_hz, **kwargs)
    return write


@contextlib.contextmanager
def one_torch_thread():
    """Torch on one thread meanwhile: a tiny model's batches are too small to share out, and
    on a busy machine a second thread mostly waits for the first; the same bits on every
    machine, too."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_tiny(out_dir: Path, clip_dir: Path, seed: int = 0, name: str = "tiny", base=None) -> Path:
    """Train a real model for 4 steps on a subset of the example clips (from scratch, or
    fine-tuning the Model `base`); writes out_dir/model.pt and out_dir/memory.npz and returns out_dir."""
    from speakertag.memory import save_memory
    from speakertag.model import save_model
    from speakertag.params import Params
    from speakertag.train import train

    for role, names, sub in (("positive", TINY_POSITIVE, "pos"), ("negative", TINY_NEGATIVE, "neg")):
        (clip_dir / sub).mkdir(parents=True, exist_ok=True)
        for n in names:
            shutil.copy(EXAMPLE / role / n, clip_dir / sub / n)
    p = Params()
    # 4 steps from scratch may give a threshold that most negatives exceed: allowed here (max share 1)
    p = replace(p, train=replace(p.train, max_steps=4, eval_every_steps=2, batch_size=16, seed=seed,
                                 max_negative_share=1.0))
    with one_torch_thread():
        model, memory, _ = train([clip_dir / "pos"], [clip_dir / "neg"], p, base=base, name=name)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, out_dir)
    save_memory(memory, out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A folder with model.pt + memory.npz of a 4-step model (voice name "tiny")."""
    root = tmp_path_factory.mktemp("tiny")
    return train_tiny(root / "model", root / "clips")


def write_container(path: Path, tracks: list[tuple[str, np.ndarray, int]], video: bool = False) -> Path:
    """Write a media container with PyAV (format from the suffix).

    tracks: (codec, samples (channels, n) float in [-1, 1], rate_hz) per audio stream, in
    stream order; 1 or 2 channels (mono/stereo), 6 (5.1) or 8 (7.1). video: add a tiny black
    MPEG-4 video stream; with no tracks, a video-only file.
    """
    import av

    layouts = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}
    container = av.open(str(path), "w")
    streams = []
    for codec, samples, rate_hz in tracks:
        samples = np.atleast_2d(samples)
        s = container.add_stream(codec, rate=rate_hz, layout=layouts[len(samples)])
        streams.append((s, samples, layouts[len(samples)]))
    v = None
    if video:
        v = container.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
    for s, samples, layout in streams:
        fmt = s.codec_context.format
        n = 960 if "opus" in s.codec_context.name else 1024  # the frame size each encoder wants
        pts = 0
        for i in range(0, samples.shape[1], n):
            chunk = samples[:, i:i + n]
            chunk = np.pad(chunk, ((0, 0), (0, n - chunk.shape[1])))
            chunk = _in_format(chunk, fmt.name)
            frame = av.AudioFrame.from_ndarray(chunk if fmt.is_planar else chunk.T.reshape(1, -1),
                                               format=fmt.name, layout=layout)
            frame.sample_rate, frame.pts = s.rate, pts
            pts += n
            for packet in s.encode(frame):
                container.mux(packet)
        for packet in s.encode(None):
            container.mux(packet)
    if v is not None:
        for _ in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            for packet in v.encode(frame):
                container.mux(packet)
        for packet in v.encode(None):
            container.mux(packet)
    container.close()
    return path


def _in_format(chunk: np.ndarray, fmt: str) -> np.ndarray:
    """Float samples in [-1, 1] as the encoder's sample format wants them (s16, s32 or float)."""
    if fmt.startswith("s16"):
        return np.round(np.clip(chunk, -1, 1) * 32767).astype(np.int16)
    if fmt.startswith("s32"):
        return np.round(np.clip(chunk, -1, 1) * (2 ** 31 - 1)).astype(np.int32)
    return chunk.astype(np.float32)


def write_timed(path: Path, pieces: list[tuple[float, np.ndarray]], rate_hz: int, codec: str,
                video_s: float = 0.0) -> Path:
    """Write mono audio whose pieces sit at chosen times of the film, with PyAV (format from the suffix).

    pieces: (start_s, samples (n,) float in [-1, 1]) each: the timestamps of a piece's frames
    count from start_s, so that a piece starting after the previous one ended leaves a gap
    in the audio's timestamps (a late start, for the first). Each piece is padded with zeros
    to whole encoder frames. video_s: also a tiny video stream from 0 s that long (2
    frames/s), which sets the container's start.
    """
    import av
    from fractions import Fraction

    container = av.open(str(path), "w")
    a = container.add_stream(codec, rate=rate_hz, layout="mono")
    a.codec_context.open()  # the encoder's frame size is known once it is open
    n, fmt = a.codec_context.frame_size or 1024, a.codec_context.format
    packets = []
    for start_s, samples in pieces:
        for i in range(0, len(samples), n):
            chunk = np.pad(samples[i:i + n], (0, max(0, i + n - len(samples))))[None]
            chunk = _in_format(chunk, fmt.name)
            frame = av.AudioFrame.from_ndarray(chunk, format=fmt.name, layout="mono")
            frame.sample_rate, frame.time_base = rate_hz, Fraction(1, rate_hz)
            frame.pts = round(start_s * rate_hz) + i
            packets += a.encode(frame)
    packets += a.encode(None)
    video = []
    if video_s:
        v = container.add_stream("mpeg4", rate=2)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        for k in range(int(video_s * 2)):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = k
            video += v.encode(frame)
        video += v.encode(None)
    for packet in packets:  # the audio in its order (timestamps may go back), the video interleaved by time
        while video and video[0].dts * video[0].time_base <= packet.dts * packet.time_base:
            container.mux(video.pop(0))
        container.mux(packet)
    for packet in video:
        container.mux(packet)
    container.close()
    return path
