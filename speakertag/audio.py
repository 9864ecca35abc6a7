"""Open any audio or video file and yield mono blocks at the model rate.

soundfile reads plain audio files (wav, flac, ogg, aiff, ...); PyAV (FFmpeg) reads every
container and codec FFmpeg knows (mp3, mkv, mp4, ts, webm; AAC, AC-3, DTS, Opus, ...). MP3
goes to FFmpeg: soundfile's mpg123 prints warnings about damaged files on stderr. Channels
are mixed to mono as `channels` asks (CHANNEL_CHOICES), then one streaming resampler
brings the audio to the model rate: `source_blocks` decodes and keeps the channels the mix
needs, `to_model_rate` mixes and resamples, `decode_blocks` does both (the tagger may run the
two on different threads). Nothing here holds a whole file at its source rate.

Films carry 5.1 and 7.1 with the dialogue in the centre channel (FC). `centre` hears it
alone, `centre-weighted` hears (FC + w * (FL + FR)) / (1 + 2w) (w: params.CHANNELS.front_weight),
`average` the mean of all channels, and `auto` picks params.CHANNELS.auto for layouts with
a centre and at least params.CHANNELS.auto_min_channels channels, `average` for the others.
A layout without channel names (FFmpeg's "6 channels") has no centre: it is averaged.
Mono is heard as it is; stereo is averaged, except with `coherent`: both channels are
resampled and `stereo.CoherentMid` keeps the part of their mid signal that the two share
(a voice panned anywhere), weakening wide music and ambience; other layouts hear `coherent`
as `auto`. For
`average` of more than two channels, the AC-3, E-AC-3, DTS and TrueHD decoders mix down
themselves (their `downmix` option, DECODER_DOWNMIX), running their inverse transforms on
fewer channels: their mix leaves out the LFE and follows the stream's mix levels, a gain
the features do not see (the encoder subtracts each frame's mean log-mel).

Times follow the film's timeline, as a player shows it: time 0 is the container's start, and
the decoded frames' timestamps place the audio on it. Audio that starts late is preceded by
digital silence (zeros) of that length, and a forward jump in the timestamps (a broadcast
recording's lost signal) is filled with zeros of its length, so that every sample sits at its
film time (`_pyav_blocks` has the rules). soundfile's files have no timestamps: their samples
start at 0 and are contiguous.

Float files can hold any value: NaN samples become 0, infinite ones full scale (+-1), and
samples are clipped to +-MAX_ABS_SAMPLE, so that what reaches the features is finite.
Every failure to read a file is a SpeakertagError with a one-line message.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import av
import av.error
import numpy as np
import soundfile as sf

from .errors import SpeakertagError, first_line
from .io_utils import file_kind
from .params import CHANNEL_CHOICES, CHANNELS, STEREO, ChannelParams
from .stereo import CoherentMid

SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".w64", ".caf"}
CONTAINER_SUFFIXES = {
    ".mp3", ".mkv", ".mka", ".mp4", ".m4a", ".m4v", ".mov", ".ts", ".m2ts", ".mts", ".webm", ".avi",
    ".opus", ".aac", ".ac3", ".eac3", ".dts", ".mp2", ".mpg", ".mpeg", ".wma", ".wmv", ".flv",
}
MEDIA_SUFFIXES = SOUNDFILE_SUFFIXES | CONTAINER_SUFFIXES
# First bytes of the files soundfile reads: WAV (RIFF, RIFX, RF64), FLAC, Ogg, AIFF, AU, W64, CAF.
SOUNDFILE_MAGIC = {b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"FORM", b".snd", b"riff", b"caff"}

BLOCK_S = 20.0  # seconds of source audio gathered before one downmix + resample call
SPAN_BLOCK_S = 2.0  # the same when reading a span: a short span decodes little past its end
SEEK_PREROLL_S = 1.0  # a span is decoded from at least this long before it (decoder and resampler warm-up)
# Float samples are clipped to this: 120 dB above full scale leaves any real recording
# untouched (int16 values stored unscaled as floats too) and keeps the power spectrum finite
# in float32 (it overflows from about 1e16).
MAX_ABS_SAMPLE = 1e6
# Planar frames with more channels than this are repacked before PyAV copies them (_safe_frames).
MAX_PLANAR_CHANNELS = 7
# A jump in the frames' timestamps up to this far beyond the end of the frame before is jitter,
# or a dropped frame or two: not a gap (a frame is 10-64 ms).
GAP_TOLERANCE_S = 0.1
# A longer jump is taken for a damaged timestamp, not a gap: hours of silence from one bad frame.
MAX_GAP_S = 3600.0
# Source rates outside this range are damaged headers: 1 Hz audio would be upsampled 22050x.
MIN_RATE_HZ, MAX_RATE_HZ = 1000, 1_000_000


# Decoders that mix down themselves when asked (their "downmix" option), and the layout asked
# for: AC-3 and E-AC-3 give mono; DTS and TrueHD document stereo only (averaged here).
DECODER_DOWNMIX = {"ac3": "mono", "ac3_fixed": "mono", "eac3": "mono", "dca": "stereo", "truehd": "stereo",
                   "mlp": "stereo"}
# PyAV sample formats (packed names) read plane by plane when only some channels are kept.
PLANE_DTYPES = {"u8": np.uint8, "s16": np.int16, "s32": np.int32, "s64": np.int64, "flt": np.float32,
                "dbl": np.float64}


@dataclass(frozen=True)
class Mix:
    """How one layout's channels become mono: keep `channels` (indices into the layout; None:
    all) and weight them by `weights` (None: their mean)."""
    choice: str  # "average", "centre", "centre-weighted" or "coherent": what was applied
    channels: tuple[int, ...] | None = None
    weights: tuple[float, ...] | None = None


def check_channels(choice: str) -> str:
    if choice not in CHANNEL_CHOICES:
        raise SpeakertagError(f"unknown channel choice {choice!r}: one of {', '.join(CHANNEL_CHOICES)}")
    return choice


def channel_mix(names: tuple[str, ...], choice: str, p: ChannelParams = CHANNELS) -> Mix:
    """The mix of a layout whose channels are `names` (FFmpeg's: FL, FR, FC, LFE, ...; a
    layout without names gives none of these) for `choice`, one of CHANNEL_CHOICES.
    Mono is averaged whatever the choice; stereo too unless the choice is `coherent`; a
    layout without a centre is averaged."""
    check_channels(choice)
    if len(names) == 2 and choice == "coherent":
        return Mix("coherent")
    if choice == "coherent":
        choice = "auto"
    if len(names) <= 2 or "FC" not in names:  # FFmpeg's mono layout is FC alone
        return Mix("average")
    if choice == "auto":
        choice = p.auto if len(names) >= p.auto_min_channels else "average"
    centre = names.index("FC")
    if choice == "centre":
        return Mix("centre", (centre,), (1.0,))
    if choice == "centre-weighted":
        fronts = tuple(names.index(n) for n in ("FL", "FR") if n in names)
        total = 1.0 + p.front_weight * len(fronts)
        return Mix("centre-weighted", (centre, *fronts),
                   (1.0 / total, *(p.front_weight / total for _ in fronts)))
    return Mix("average")


@dataclass(frozen=True)
class AudioInfo:
    path: str
    duration_s: float | None  # None when the container does not say
    source_rate_hz: int
    channels: int
    codec: str
    stream_index: int | None  # audio stream number among the file's audio streams (PyAV only)
    layout: tuple[str, ...] = ()  # the channels' names (FFmpeg's: FL, FR, FC, LFE, ...); () when not known


def find_media_files(paths: list[str | Path], unreadable: list[OSError] | None = None) -> list[Path]:
    """Files named directly, plus media files found recursively in named folders, sorted.

    A folder that cannot be listed (permission denied) is refused with a SpeakertagError,
    or, when `unreadable` is given, its error (naming it) is appended there: a batch names
    it and goes on."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            errors: list[OSError] = []
            inside = sorted(Path(root) / name for root, _, names in os.walk(p, onerror=errors.append) for name in names
                            if Path(name).suffix.lower() in MEDIA_SUFFIXES and (Path(root) / name).is_file())
            if errors:
                if unreadable is None:
                    raise SpeakertagError(f"cannot read folder {errors[0].filename}: {errors[0].strerror or errors[0]}")
                unreadable.extend(errors)
            elif not inside:
                raise SpeakertagError(f"no audio or video files in folder: {p}")
            found.extend(inside)
        elif p.exists():
            found.append(p)
        else:
            raise SpeakertagError(f"no such file or folder: {p}")
    return found


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise SpeakertagError(f"no such file: {path}")
    if path.is_dir():
        raise SpeakertagError(f"expected a file, got a folder: {path}")
    kind = file_kind(path)
    if kind:  # st_size of a pipe is 0: it would be called empty
        raise SpeakertagError(f"cannot read {path}: it is {kind}, not a regular file; speakertag reads films "
                              "and clips from files only")
    if not os.access(path, os.R_OK):
        raise SpeakertagError(f"cannot read (permission denied): {path}")
    if path.stat().st_size == 0:
        raise SpeakertagError(f"empty file: {path}")


def _use_soundfile(path: Path) -> bool:
    """Whether soundfile reads `path`: a plain audio file by its name and its first bytes.
    MPEG audio goes to FFmpeg whatever its name: libsndfile decodes it with mpg123, which
    prints its complaints about damaged frames on stderr."""
    if path.suffix.lower() not in SOUNDFILE_SUFFIXES:
        return False
    with open(path, "rb") as f:
        if f.read(4) not in SOUNDFILE_MAGIC:
            return False
    try:
        return not sf.info(str(path)).subtype.startswith("MPEG")
    except Exception:  # noqa: BLE001 - soundfile cannot read it: let FFmpeg try
        return False


def _decodable(s, path: Path):
    """The stream, if FFmpeg set up a decoder for it (a damaged header can leave none)."""
    if s.codec_context is None:
        raise SpeakertagError(f"cannot decode {path}: no decoder for its audio stream (unknown codec or damaged file)")
    return s


def _pick_stream(container, path: Path, stream: int | None):
    audio = list(container.streams.audio)
    if not audio:
        raise SpeakertagError(f"no audio stream in {path}")
    if stream is None:
        defaults = [s for s in audio if s.disposition & av.stream.Disposition.default]
        return _decodable((defaults or audio)[0], path), None
    if not 0 <= stream < len(audio):
        raise SpeakertagError(f"--stream {stream} does not exist in {path}: it has {len(audio)} audio stream(s), 0-{len(audio) - 1}")
    return _decodable(audio[stream], path), stream


def probe(path: str | Path, stream: int | None = None) -> AudioInfo:
    """Describe the audio that `decode_blocks` would read, without decoding it."""
    path = Path(path)
    _check_readable(path)
    if _use_soundfile(path):
        info = sf.info(str(path))
        return AudioInfo(str(path), info.duration, info.samplerate, info.channels, info.format, None)
    container = _open_container(path)
    with container:
        s, index = _pick_stream(container, path, stream)
        duration_s = float(s.duration * s.time_base) if s.duration else (
            container.duration / 1e6 if container.duration else None)
        return AudioInfo(str(path), duration_s, s.rate, s.channels, s.codec_context.name, index, _layout_names(s))


def _layout_names(s) -> tuple[str, ...]:
    return tuple(c.name for c in s.layout.channels) if s.layout else ()


def _downmix(codec: str, n_channels: int, names: tuple[str, ...], channels: str) -> str | None:
    """The layout a `codec` decoder is asked to mix down to (DECODER_DOWNMIX), or None."""
    downmix = DECODER_DOWNMIX.get(codec)
    return downmix if downmix and n_channels > 2 and channel_mix(names, channels).choice == "average" else None


def _decoder_downmix(s, channels: str) -> str | None:
    """The layout stream `s`'s decoder is asked to mix down to, or None."""
    return _downmix(s.codec_context.name, s.channels, _layout_names(s), channels)


def decoded_channels(info: AudioInfo, channels: str = "auto") -> int:
    """How many channels the decoder gives for the probed track `info` read as `decode_blocks`
    reads it (the stream's, or fewer when the decoder mixes down): what decoding costs, roughly."""
    return {"mono": 1, "stereo": 2}.get(_downmix(info.codec, info.channels, info.layout, channels), info.channels)


def decoding_cost(info: AudioInfo, channels: str = "auto") -> str:
    """What makes decoding `path` as `decode_blocks` does dear, for the tagger's split of the
    work between its threads: "light" (at most two channels decoded, as a plain stereo track),
    "decoder" (more channels decoded: FFmpeg's own work, e.g. 5.1 decoded whole for its centre)
    or "mask" (stereo heard `coherent`: both channels resampled and masked). On 2 cores, 2-hour
    AC-3 film: stereo decodes in 8 s, 5.1 in 12-14 s (9.5 of them FFmpeg's), coherent stereo in
    12-14 s. info: probe()'s description of the track."""
    n = decoded_channels(info, channels)
    if n == 2 and channel_mix(("FL", "FR"), channels).choice == "coherent":
        return "mask"
    return "decoder" if n > 2 else "light"


def _open_container(path):
    """path: a file's path, or a file object read front to back (live.py)."""
    piped = hasattr(path, "read")
    try:
        # Tags are not always UTF-8 (ID3 tags in Latin-1 are common): replace what does not decode.
        return av.open(path if piped else str(path), metadata_errors="replace")
    except av.error.FFmpegError as e:
        raise SpeakertagError(f"cannot read {path}: not an audio or video file FFmpeg understands "
                              f"({e.strerror or e}){_pipe_hint(path)}") from None


def _pipe_hint(path) -> str:
    """What to do when a stream read front to back cannot be decoded (an MP4 keeps its index at its end)."""
    return ("; a stream must be in a format read front to back, e.g. ffmpeg -i FILM -c copy -f matroska -"
            if hasattr(path, "read") else "")


class _Resampler:
    """Streaming resampler of mono (n,) or stereo (2, n) float32 blocks to the model rate
    (FFmpeg's swresample)."""

    def __init__(self, source_rate_hz: int, target_rate_hz: int, n_channels: int = 1):
        self.source_rate_hz, self.n_channels = source_rate_hz, n_channels
        self.same_rate = source_rate_hz == target_rate_hz
        self.layout = "mono" if n_channels == 1 else "stereo"
        self.resampler = None if self.same_rate else av.AudioResampler(format="fltp", layout=self.layout,
                                                                        rate=target_rate_hz)

    def __call__(self, block: np.ndarray | None) -> np.ndarray:
        """Resample the next block; `None` flushes what the filter still holds."""
        empty = np.zeros((0,) if self.n_channels == 1 else (self.n_channels, 0), np.float32)
        if self.same_rate:
            return empty if block is None else block
        if block is None:
            frames = self.resampler.resample(None)
        else:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block.reshape(self.n_channels, -1)), format="fltp",
                                               layout=self.layout)
            frame.sample_rate = self.source_rate_hz
            frames = self.resampler.resample(frame)
        if not frames:
            return empty
        out = np.concatenate([f.to_ndarray() for f in frames], axis=1)
        return out[0] if self.n_channels == 1 else out


class _ToModelRate:
    """One stream's blocks, as the source gives them ((channels, n) at the source rate, with
    their Mix), as mono float32 blocks at the model rate: mixed, resampled and, for a
    `coherent` mix, resampled in stereo and then reduced by CoherentMid."""

    def __init__(self, source_rate_hz: int, target_rate_hz: int, mix: Mix):
        self.source_rate_hz = source_rate_hz
        self.stereo = coherent = mix.choice == "coherent"  # the filters then take two channels
        self.resample = _Resampler(source_rate_hz, target_rate_hz, 2 if coherent else 1)
        self.coherent = CoherentMid(target_rate_hz, STEREO) if coherent else None

    def __call__(self, block: np.ndarray | None, weights: tuple[float, ...] | None = None) -> np.ndarray:
        """The next block (None flushes)."""
        if self.coherent is None:
            return self.resample(None if block is None else _clean(block, weights))
        stereo = self.resample(None if block is None else _clean(block, keep_channels=True))
        out = self.coherent(stereo)
        return out if block is not None else np.concatenate([out, self.coherent(None)])


def _to_float(x: np.ndarray) -> np.ndarray:
    """Samples of any FFmpeg sample format as float32 in [-1, 1]: integer PCM (u8, s16,
    s32, s64) is scaled by its full range, as FFmpeg itself does when converting to float."""
    if x.dtype.kind == "f":
        return x.astype(np.float32, copy=False)
    full = float(2 ** (8 * x.dtype.itemsize - 1))
    if x.dtype.kind == "u":  # unsigned PCM is centred on 2 ** (bits - 1)
        return ((x.astype(np.float64) - full) / full).astype(np.float32)
    return (x.astype(np.float64) / full).astype(np.float32)


def _clean(block: np.ndarray, weights: tuple[float, ...] | None = None, keep_channels: bool = False) -> np.ndarray:
    """Mix a (channels, n) block to float32 mono (the channels' mean, or weighted by
    `weights`, one per row; keep_channels: not mixed, (channels, n)) with finite samples in
    [-MAX_ABS_SAMPLE, MAX_ABS_SAMPLE]: NaN becomes 0, +-inf full scale."""
    block = block.astype(np.float32, copy=False)
    if keep_channels:
        out = block.copy()
    elif weights is None:
        out = block.mean(axis=0)
    else:  # a sum, not a matrix product: BLAS threads left spinning would slow the decoder down
        out = block[0] * np.float32(weights[0])
        for row, w in zip(block[1:], weights[1:]):
            out += row * np.float32(w)
    if not np.isfinite(out).all():  # float files can hold anything; decoded compressed audio is finite
        np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(out, -MAX_ABS_SAMPLE, MAX_ABS_SAMPLE, out=out)


def _soundfile_reason(e: Exception) -> str:
    """libsndfile's message without its "Error : " prefix."""
    return first_line(e).removeprefix("Error : ").rstrip(".")


def _soundfile_blocks(path: Path, block_s: float, channels: str,
                      seek_s: float = 0.0) -> Iterator[tuple[np.ndarray, int, Mix]]:
    """(channels, n) blocks from seek_s on, their rate and their Mix (soundfile gives no channel
    layout, so a 5.1 WAV is averaged; a two-channel one is taken for stereo)."""
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:  # noqa: BLE001 - soundfile raises several types
        raise SpeakertagError(f"cannot read {path}: {_soundfile_reason(e)}") from None
    with f:
        n = max(1, int(block_s * f.samplerate))
        mix = channel_mix(("FL", "FR") if f.channels == 2 else (), channels)
        if seek_s:
            f.seek(min(round(seek_s * f.samplerate), f.frames))
        while True:
            try:
                data = f.read(n, dtype="float32", always_2d=True)
            except Exception as e:  # noqa: BLE001 - soundfile raises several types
                raise SpeakertagError(f"cannot decode {path}: {_soundfile_reason(e)} (damaged or truncated file)") from None
            if len(data) == 0:
                return
            yield data.T, f.samplerate, mix


def _safe_frames(frames: Iterator) -> Iterator:
    """The decoded frames, those of planar audio with more than MAX_PLANAR_CHANNELS channels
    repacked (interleaved) by FFmpeg first.

    PyAV counts a frame's planes up to the first null pointer, which planar audio of 8 or more
    channels (7.1, or a damaged header's 46) does not have: it reads past the last plane and
    crashes the process when the samples are copied.
    """
    repack, key = None, None
    for frame in frames:
        if frame.format.is_planar and frame.layout.nb_channels > MAX_PLANAR_CHANNELS:
            k = (frame.format.name, frame.layout.nb_channels, frame.sample_rate)
            if k != key:
                if repack is not None:
                    yield from repack.resample(None)
                repack, key = av.AudioResampler(format=frame.format.packed, layout=frame.layout,
                                                rate=frame.sample_rate), k
            yield from repack.resample(frame)
            continue
        if repack is not None:
            yield from repack.resample(None)
            repack, key = None, None
        yield frame
    if repack is not None:
        yield from repack.resample(None)


def _seek(container, s, at_s: float) -> None:
    """Seek `container` so that stream `s` decodes from at or before at_s (seconds of the
    stream's timestamps). FFmpeg seeks to a keyframe before the time asked, but some formats
    (MPEG-TS) land from an estimate, maybe after it: then it seeks further back, until the
    first packet is early enough or the seek is to the start."""
    back_s = 0.0
    while True:
        to_s = max(0.0, at_s - back_s)
        container.seek(int(to_s / s.time_base), stream=s)
        first = next((p for p in container.demux(s) if p.pts is not None), None)
        if first is None or first.pts * first.time_base <= at_s or to_s == 0.0:
            break
        back_s = max(4 * back_s, 2.0)
    container.seek(int(to_s / s.time_base), stream=s)


def _pyav_blocks(path: Path, stream: int | None, block_s: float, channels: str,
                 gaps: list[tuple[float, float]] | None = None,
                 seek_s: float = 0.0) -> Iterator[tuple[np.ndarray, int, Mix]]:
    """(k, n) blocks of the channels the mix keeps, their rate and their Mix. The mix is
    chosen per layout: a TV channel's 5.1 can turn stereo mid-stream.

    The samples follow the frames' timestamps from the container's start (its start_time, 0
    where it has none). A frame that starts more than GAP_TOLERANCE_S after the end of the
    samples before it (the first frame: after the container's start) is preceded by zeros
    filling the difference, in blocks of at most block_s, and the filled span is appended to
    `gaps` as (start_s, end_s), film seconds. No zeros for frames without a timestamp, for
    frames that start earlier (an overlap, a jump back, audio before the container's start),
    for jumps of more than MAX_GAP_S, nor for jumps that would make the zeros filled in more
    than MAX_GAP_S beyond the audio decoded (damaged timestamps, which would give hours of
    silence): such a frame follows the samples before it, and the timeline goes on from its
    timestamp.

    seek_s > 0: the blocks start at film time seek_s instead of 0: the container is seeked
    to a keyframe before it and the samples decoded before seek_s are dropped.
    """
    container = _open_container(path)
    with container:
        s, _ = _pick_stream(container, path, stream)
        downmix = _decoder_downmix(s, channels)
        if downmix:
            s.codec_context.options = {"downmix": downmix}  # before the first packet opens the decoder
            channels = "average"  # whatever layout it gives: a DTS without mix levels stays 5.1
        pending: list[np.ndarray] = []  # the open block's frames, unless `kept` holds them
        kept = None  # planar audio of which some planes are kept: (k, room) samples, the first pending_n filled
        is_open, pending_n, rate, packed, n_channels, layout, mix = False, 0, 0, False, 1, "", Mix("average")
        # The timeline: the timestamp (s) of film time 0, the film time of the next sample, the zeros filled in.
        zero_s = container.start_time / 1e6 if container.start_time is not None else 0.0  # AV_TIME_BASE units
        film_s, filled_s, time_base_s = 0.0, 0.0, 0.0
        trim_s = None  # after a seek: the film time before which decoded samples are dropped
        if seek_s > 0:
            _seek(container, s, seek_s + zero_s)
            film_s = trim_s = seek_s

        def join() -> np.ndarray:
            if kept is not None:
                return _to_float(kept[:, :pending_n])
            x = np.concatenate(pending, axis=1)
            if packed:  # interleaved: (1, n * channels)
                x = x.reshape(-1, n_channels).T
                if mix.channels is not None:
                    x = x[list(mix.channels)]
            return _to_float(x)  # decoders output s16/s32 as well as float

        try:
            # The per-frame work is kept to a minimum: a film has hundreds of thousands of frames.
            for frame in _safe_frames(container.decode(s)):
                if is_open and (frame.sample_rate != rate or frame.layout.name != layout):
                    yield join(), rate, mix  # the format changed (a TV channel's 5.1 ends): close the block
                    is_open, pending, pending_n = False, [], 0
                n, pts, fill, skip, lead = frame.samples, frame.pts, 0, 0, 0
                if not is_open:  # read once a block: PyAV builds a Fraction for each call
                    time_base_s = float(frame.time_base or 0)
                if trim_s is not None:  # the first frames after a seek (without a timestamp: taken as they come)
                    if pts is not None and time_base_s:
                        skip = round((trim_s - (pts * time_base_s - zero_s)) * frame.sample_rate)
                        if skip >= n:
                            continue  # wholly before the seek's time
                        # A decoder may drop its first output after a seek: a first frame that starts
                        # after the seek's time gets zeros before it, so that it sits at its time.
                        skip, lead = max(skip, 0), max(-skip, 0)
                        pts += round(skip / frame.sample_rate / time_base_s)
                        n -= skip
                    trim_s = None
                if pts is not None and time_base_s:
                    gap_s = pts * time_base_s - zero_s - film_s
                    if not -GAP_TOLERANCE_S <= gap_s <= GAP_TOLERANCE_S:
                        if 0 < gap_s <= MAX_GAP_S and filled_s + gap_s <= MAX_GAP_S + film_s - filled_s:
                            fill, lead = round(gap_s * frame.sample_rate), 0  # a gap: named in `gaps`
                            if is_open:  # the zeros go between this block and the next
                                yield join(), rate, mix
                                is_open, pending, pending_n = False, [], 0
                        else:
                            zero_s += gap_s
                    elif lead:
                        fill = lead
                if not is_open:
                    is_open, rate, layout = True, frame.sample_rate, frame.layout.name
                    n_channels = frame.layout.nb_channels
                    packed = not frame.format.is_planar
                    mix = channel_mix(tuple(c.name for c in frame.layout.channels), channels)
                    # Planar: only the planes the mix keeps (the centre: 1 of 6) are copied, each frame's
                    # straight into the block (holding views of the frames kept FFmpeg from reusing its
                    # buffers: 5.1 decoded 10-15 % slower; a list of copies joined later cost 0.8 s more
                    # per 2-hour 5.1 film).
                    dtype = None if packed or mix.channels is None else PLANE_DTYPES.get(frame.format.packed.name)
                    kept = None if dtype is None else np.empty((len(mix.channels), int(block_s * rate) + 2 * n), dtype)
                if fill:
                    if gaps is not None and not lead:
                        gaps.append((round(film_s, 3), round(film_s + fill / rate, 3)))
                    yield from _zeros(fill, n_channels if mix.channels is None else len(mix.channels),
                                      max(1, int(block_s * rate)), rate, mix)
                    film_s += fill / rate
                    filled_s += fill / rate
                if kept is not None:
                    if pending_n + n > kept.shape[1]:  # frames longer than the first: more room
                        kept = np.concatenate([kept[:, :pending_n], np.empty_like(kept)], axis=1)
                    for j, i in enumerate(mix.channels):
                        kept[j, pending_n:pending_n + n] = np.frombuffer(frame.planes[i], kept.dtype, n + skip)[skip:]
                else:
                    x = frame.to_ndarray()
                    if skip:
                        x = x[:, skip * n_channels:] if packed else x[:, skip:]
                    pending.append(x if packed or mix.channels is None else x[list(mix.channels)])
                pending_n += n
                film_s += n / rate
                if pending_n >= block_s * rate:
                    yield join(), rate, mix
                    is_open, pending, pending_n = False, [], 0
        except av.error.FFmpegError as e:
            raise SpeakertagError(f"cannot decode {path}: {e.strerror or e}{_pipe_hint(path)}") from None
        if is_open:
            yield join(), rate, mix


def _zeros(n: int, n_channels: int, block_n: int, rate: int, mix: Mix) -> Iterator[tuple[np.ndarray, int, Mix]]:
    """n samples of digital silence as (n_channels, <= block_n) float32 blocks, with their rate and Mix."""
    for i in range(0, n, block_n):
        yield np.zeros((n_channels, min(block_n, n - i)), np.float32), rate, mix


def source_blocks(path: str | Path, stream: int | None = None, block_s: float = BLOCK_S,
                  channels: str = "auto", gaps: list[tuple[float, float]] | None = None,
                  seek_s: float = 0.0) -> Iterator[tuple[np.ndarray, int, Mix]]:
    """The blocks of `path` as decoded, before `to_model_rate`: ((k, n) samples at the source
    rate, the rate, the Mix that keeps those k channels). Arguments as for `decode_blocks`."""
    check_channels(channels)
    piped = hasattr(path, "read")
    if not piped:
        path = Path(path)
        _check_readable(path)
    if not piped and _use_soundfile(path):
        if stream not in (None, 0):
            raise SpeakertagError(f"--stream {stream} does not exist in {path}: it has 1 audio stream")
        yield from _soundfile_blocks(path, block_s, channels, seek_s)
    else:
        yield from _pyav_blocks(path, stream, block_s, channels, gaps, seek_s)


def to_model_rate(source: Iterable[tuple[np.ndarray, int, Mix]], sample_rate_hz: int,
                  path: str | Path) -> Iterator[np.ndarray]:
    """`source_blocks` mixed to mono and resampled to `sample_rate_hz`: mono float32 blocks.
    path: the file the blocks come from, for messages."""
    resample = None
    try:
        for block, rate, mix in source:
            if resample is None or rate != resample.source_rate_hz or (mix.choice == "coherent") != resample.stereo:
                if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
                    raise SpeakertagError(f"cannot decode {path}: its sample rate of {rate} Hz is not one of "
                                          f"{MIN_RATE_HZ}-{MAX_RATE_HZ} Hz (damaged file?)")
                if resample is not None:  # the source changed rate, or stereo for coherent, mid-stream: flush
                    yield resample(None)
                resample = _ToModelRate(rate, sample_rate_hz, mix)
            out = resample(block, mix.weights)
            if len(out):
                yield out
        if resample is None:
            raise SpeakertagError(f"no audio in {path}: not a single sample could be decoded "
                                  "(empty, truncated or damaged file)")
        tail = resample(None)
    except av.error.FFmpegError as e:  # the resampler refused what the decoder gave
        raise SpeakertagError(f"cannot decode {path}: {e.strerror or e}") from None
    if len(tail):
        yield tail


def decode_blocks(path: str | Path, sample_rate_hz: int, stream: int | None = None,
                  block_s: float = BLOCK_S, channels: str = "auto",
                  gaps: list[tuple[float, float]] | None = None, seek_s: float = 0.0) -> Iterator[np.ndarray]:
    """Yield consecutive mono float32 blocks of `path` resampled to `sample_rate_hz`.

    Each block is 1-D, at most about `block_s` seconds; their concatenation is the whole
    track on the film's timeline (sample i at i / sample_rate_hz s of the film): a late start
    and gaps in the timestamps are filled with zeros, each filled span appended to `gaps`
    (when given) as (start_s, end_s) as it is reached (module docstring).
    channels: how a 5.1 or 7.1 track becomes mono, one of CHANNEL_CHOICES (module docstring).
    seek_s > 0: the blocks start at film time seek_s (a seek, not a decoding of what is before;
    a file, not a file object); give whole seconds to get the samples a decoding from the start
    gives (the resampler's phase), the decoder's first output after the seek aside.
    Raises SpeakertagError for unreadable files, missing streams and decode failures.
    path may also be a binary file object that FFmpeg reads front to back (live.py).
    """
    yield from to_model_rate(source_blocks(path, stream, block_s, channels, gaps, seek_s), sample_rate_hz, path)


def load_audio(path: str | Path, sample_rate_hz: int, stream: int | None = None,
               channels: str = "auto", gaps: list[tuple[float, float]] | None = None) -> np.ndarray:
    """A whole (short) file as one mono float32 array at `sample_rate_hz`, shape (n_samples,),
    on its timeline as decode_blocks gives it (the filled gaps appended to `gaps`)."""
    blocks = list(decode_blocks(path, sample_rate_hz, stream, channels=channels, gaps=gaps))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def load_span(path: str | Path, start_s: float, end_s: float, sample_rate_hz: int, stream: int | None = None,
              channels: str = "auto", gaps: list[tuple[float, float]] | None = None) -> np.ndarray:
    """The film's audio from start_s to end_s, (n,) float32 mono at sample_rate_hz: the samples
    load_audio(path)[round(start_s * rate):round(end_s * rate)] holds (shorter when the audio
    ends first), decoded from a seek to shortly before start_s, never from the film's start.
    Matroska's timestamps are whole milliseconds: there, the span is placed to within about 1 ms.
    Filled gaps inside the span are appended to `gaps` (film seconds)."""
    # Decoding starts SEEK_PREROLL_S early, on a whole second (the resampler's phase of a full
    # decoding): the decoder's first frames after a seek and the resampler's start are dropped.
    from_s = float(max(0, math.floor(start_s - SEEK_PREROLL_S)))
    first = round(start_s * sample_rate_hz) - round(from_s * sample_rate_hz)
    last = round(end_s * sample_rate_hz) - round(from_s * sample_rate_hz)
    found: list[tuple[float, float]] = []
    blocks = decode_blocks(path, sample_rate_hz, stream, SPAN_BLOCK_S, channels, found, from_s)
    parts, at = [], 0
    try:
        for block in blocks:
            lo, hi = max(first, at), min(last, at + len(block))
            if hi > lo:
                parts.append(block[lo - at:hi - at])
            at += len(block)
            if at >= last:
                break
    finally:
        blocks.close()  # stop the decoder now, not when garbage-collected
    if gaps is not None:
        gaps.extend((max(a, start_s), min(b, end_s)) for a, b in found if a < end_s and b > start_s)
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def without_gaps(samples: np.ndarray, gaps: Iterable[tuple[float, float]], sample_rate_hz: int) -> np.ndarray:
    """`samples` (n,) at sample_rate_hz with the spans `gaps` ((start_s, end_s), as decode_blocks
    reports them) cut out: the audio alone, where its timeline does not matter (a clip)."""
    kept, at = [], 0
    for start_s, end_s in gaps:  # in time order
        kept.append(samples[at:round(start_s * sample_rate_hz)])
        at = round(end_s * sample_rate_hz)
    return np.concatenate(kept + [samples[at:]]) if kept else samples


def encode_opus(blocks: Iterable[np.ndarray], sample_rate_hz: int, bit_rate: int, compression_level: int,
                progress: Callable[[float], None] | None = None, container_format: str = "webm") -> bytes:
    """Mono float32 blocks (shape (n_samples,), at sample_rate_hz) as Opus in WebM (or another
    container_format FFmpeg muxes Opus into: "ogg"), bytes.
    bit_rate in bits per second; compression_level: the encoder's effort, 0-10.
    progress(seconds_done) is called after each block."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container_format) as container:
        out = container.add_stream("libopus", rate=sample_rate_hz, layout="mono")
        out.bit_rate = bit_rate
        out.codec_context.options = {"compression_level": str(compression_level)}
        n_samples = 0
        for block in blocks:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block, np.float32)[None, :], format="flt",
                                               layout="mono")
            frame.sample_rate, frame.pts = sample_rate_hz, n_samples
            n_samples += len(block)
            for packet in out.encode(frame):
                container.mux(packet)
            if progress:
                progress(n_samples / sample_rate_hz)
        for packet in out.encode(None):
            container.mux(packet)
    return buf.getvalue()
