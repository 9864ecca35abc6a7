"""The one place the tagging stages meet: decode -> windows -> embed -> search -> segments."""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .audio import AudioInfo, decode_blocks, decoding_cost, probe, source_blocks, to_model_rate
from .decoder import MIN_DURATION_S, decoded_in_child
from .errors import SpeakertagError
from .features import cell_levels_db, stream_windows
from .memory import MEMORY_FILE, Memory, load_memory
from .model import MODEL_FILE, Model, embed, embed_keeping_frames, embed_short, load_model
from .params import AudioParams, LiveParams, TagParams
from .scoring import Scorer
from .segments import (Segment, SegmentStream, exclusive_segments, runs, segment_runs, short_windows_needed,
                       to_segments)


@dataclass(frozen=True)
class Voice:
    """A model and its memory, checked to belong together (the memory's embeddings are the
    model's), with the rules for its segments: the tag params of the memory's checksummed
    params object, with which its threshold was calibrated (the model's copy is not used)."""
    model: Model
    memory: Memory
    label: str = ""  # the name on its segments; "" means the memory's (set by `train --name`)
    tag_params: TagParams | None = None  # None means the memory's own
    folder: Path | None = None  # the model folder it was loaded from, named in outputs (None: not from a folder)

    def __post_init__(self):
        check_pair(self.model, self.memory)

    @property
    def name(self) -> str:
        return self.label or self.memory.name

    @property
    def params(self) -> TagParams:
        """The tagging params: the memory's, with which its threshold was calibrated, unless overridden."""
        return self.tag_params or self.memory.params.tag


@dataclass(frozen=True)
class TagOptions:
    """How to tag, beside the voices; None keeps each voice's own (its memory's threshold, its tag params)."""
    threshold: float | None = None  # one threshold for every voice; None: each memory's calibrated one
    stream: int | None = None  # the audio track (0 = first); None: the file's default track
    channels: str = "auto"  # how a 5.1, 7.1 or stereo track becomes mono (params.CHANNEL_CHOICES)
    min_gap_s: float | None = None  # merge segments closer than this
    min_duration_s: float | None = None  # drop segments shorter than this
    edge_db: float | None = None  # segment edges grow over cells at most this far below the segment's level
    short_edges: bool | None = None  # move edges with 1 s windows (segments.ShortEdges)
    exclusive: bool = False  # several voices: each moment to at most one (tagging.exclusive)

    def applied(self, voice: Voice) -> Voice:
        """`voice` with these options' segment rules in place of its own."""
        tp = voice.params
        return replace(voice, tag_params=replace(
            tp, min_gap_s=tp.min_gap_s if self.min_gap_s is None else self.min_gap_s,
            min_duration_s=tp.min_duration_s if self.min_duration_s is None else self.min_duration_s,
            edge_db=tp.edge_db if self.edge_db is None else self.edge_db,
            short_edges=tp.short_edges if self.short_edges is None else self.short_edges))

    def threshold_of(self, voice: Voice) -> float:
        return voice.memory.threshold if self.threshold is None else self.threshold


def load_voice(directory: str | Path, device: str | None = None) -> Voice:
    """Load DIR/model.pt and DIR/memory.npz; refuses a memory made by another model.
    device: "cpu", "cuda" or None / "auto" (CUDA when available)."""
    return Voice(load_model(directory, device), load_memory(directory), folder=Path(directory))


@dataclass(frozen=True)
class VoiceSpec:
    """Where the voices to tag with are loaded from: small and picklable, for worker processes."""
    model_dirs: tuple[Path, ...]  # model folders, or folders of model folders
    memory_file: Path | None = None  # a memory to use instead of the model folder's (one model only)
    device: str | None = None

    def load(self) -> list[Voice]:
        """The voices, in the order of voice_files(); voices trained under the same name are
        labelled by folder."""
        files = voice_files(self)
        if self.memory_file and len(files) > 1:
            raise SpeakertagError("--memory needs exactly one model")
        voices = []
        for d, _, memory in files:
            voice = load_voice(d, self.device)
            if self.memory_file:
                voice = replace(voice, memory=load_memory(memory))
                check_pair(voice.model, voice.memory)
            voices.append(voice)
        names = [v.name for v in voices]
        if len(set(names)) < len(names):
            voices = [replace(v, label=d.name) for v, (d, _, _) in zip(voices, files)]
        return voices


def model_folders(paths: Sequence[Path]) -> list[Path]:
    """Model folders (holding model.pt) named directly or found one level inside the given folders."""
    found: list[Path] = []
    for p in paths:
        if not p.is_dir():
            raise SpeakertagError(f"no such model folder: {p}")
        inner = [] if (p / MODEL_FILE).exists() else sorted(d for d in p.iterdir() if (d / MODEL_FILE).is_file())
        found.extend(inner or [p])  # a folder without models fails in load_model with its own message
    return found


def voice_files(spec: VoiceSpec) -> list[tuple[Path, Path, Path]]:
    """(model folder, model file, memory file) of each voice of `spec`, in the order it loads them."""
    return [(d, d / MODEL_FILE, spec.memory_file or d / MEMORY_FILE) for d in model_folders(spec.model_dirs)]


def check_pair(model: Model, memory: Memory) -> None:
    """Refuse a memory whose embeddings another encoder made (another fingerprint, front end
    or architecture). Its train and tag params may differ from the model's (a memory of
    another training with the same encoder): tagging uses the memory's."""
    if memory.model_fingerprint != model.fingerprint:
        raise SpeakertagError(f"the memory was made by another model (fingerprint {memory.model_fingerprint}, "
                              f"model {model.fingerprint})")
    for group in ("audio", "encoder"):
        mine, theirs = getattr(memory.params, group), getattr(model.params, group)
        if mine != theirs:
            key = next(k for k in vars(mine) if getattr(mine, k) != getattr(theirs, k))
            raise SpeakertagError(f"the memory was made with other {group} params than the model's "
                                  f"({group}.{key}: memory {getattr(mine, key)}, model {getattr(theirs, key)})")


def _prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """Run `items` in a background thread, `depth` items ahead: FFmpeg decodes the next
    block while torch embeds this one (both release the GIL). Exceptions are re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work():
        try:
            for item in items:
                if stop.is_set():
                    break
                q.put(item)
            else:
                q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)
        finally:  # closed here, where it runs: a decoding process (decoder.py) is stopped now
            if hasattr(items, "close"):
                items.close()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)


def _timed(items: Iterator, stage_s: dict[str, float], key: str) -> Iterator:
    """Yield from items, adding the wall time spent producing each to stage_s[key]."""
    it = iter(items)
    while True:
        t = time.perf_counter()
        item = next(it, None)
        stage_s[key] += time.perf_counter() - t
        if item is None:
            return
        yield item


def _featured(blocks: Iterator[np.ndarray], a: AudioParams, batch_windows: int, stage_s: dict[str, float],
              wait_key: str | None) -> Iterator[tuple[int, torch.Tensor, np.ndarray, np.ndarray]]:
    """stream_windows of the decoded blocks, each batch with its cells' levels: (first window,
    windows, level of each window's first cell, levels of the last window's other cells).
    Adds its time to stage_s["features"], and the time it waited for blocks to
    stage_s[wait_key] (None: not counted)."""
    waited = {"blocks": 0.0}
    for first, windows in _timed(stream_windows(_timed(blocks, waited, "blocks"), a, batch_windows),
                                 stage_s, "features"):
        t = time.perf_counter()
        levels = cell_levels_db(windows[:, :, :a.hop_frames], a).numpy()[:, 0]
        last_levels = cell_levels_db(windows[-1:, :, a.hop_frames:], a).numpy()[0]
        stage_s["features"] += time.perf_counter() - t
        yield first, windows, levels, last_levels
    stage_s["features"] -= waited["blocks"]
    if wait_key:
        stage_s[wait_key] += waited["blocks"]


def _score_batch(voices: Sequence[Voice], encoders: list, scorers: list[Scorer], thresholds: Sequence[float],
                 windows: torch.Tensor, hop_frames: int, stage_s: dict[str, float] | None = None
                 ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Each voice's scores of a batch of windows (n,), and of their short windows (2 n,) where
    its params move edges (else None): short windows are embedded and scored only near windows
    that reach the voice's threshold (segments.short_windows_needed), -inf elsewhere. Adds the
    time spent to stage_s["encoder"] and ["search"]."""
    t, searched = time.perf_counter(), 0.0
    emb, frames = {}, {}
    for m in encoders:
        if any(v.params.short_edges and v.model is m for v in voices):
            emb[id(m)], frames[id(m)] = embed_keeping_frames(m, windows, hop_frames)
        else:
            emb[id(m)] = embed(m, windows, hop_frames)
    t_search = time.perf_counter()
    scores = [scorer(emb[id(v.model)].numpy()) for v, scorer in zip(voices, scorers)]
    searched += time.perf_counter() - t_search
    short: list[np.ndarray | None] = [None] * len(voices)
    for m in encoders:
        mine = [i for i, v in enumerate(voices) if v.params.short_edges and v.model is m]
        if not mine:
            continue
        needed = np.zeros(len(windows), bool)
        for i in mine:
            needed |= short_windows_needed(scores[i], thresholds[i] - voices[i].params.hysteresis,
                                           voices[i].model.params.audio)
        short_emb, index = embed_short(m, frames.pop(id(m)), runs(needed), hop_frames)
        t_search = time.perf_counter()
        for i in mine:
            short[i] = np.full(2 * len(windows), -np.inf, np.float32)
            if len(index):
                short[i][index] = scorers[i](short_emb.numpy())
        searched += time.perf_counter() - t_search
    if stage_s is not None:
        stage_s["encoder"] += time.perf_counter() - t - searched
        stage_s["search"] += searched
    return list(zip(scores, short))


@dataclass(frozen=True)
class VoiceTrack:
    """What one voice's pass over a film found."""
    name: str
    threshold: float
    edge_threshold: float | None  # windows scoring this much can widen a segment (None: no edge refinement)
    window_scores: np.ndarray  # (n_windows,) score of window j, which starts at j * hop_s
    segments: list[Segment]
    params: TagParams | None = None  # the rules its segments were formed with
    # (2 n_windows,) scores of the short windows (model.embed_short) where segment edges may use them, -inf elsewhere
    short_scores: np.ndarray | None = None
    folder: str = ""  # the model folder the voice was loaded from ("" when not from a folder)


@dataclass(frozen=True)
class TagResult:
    input: str
    duration_s: float
    window_s: float  # each window score covers [j * hop_s, j * hop_s + window_s)
    hop_s: float
    cell_db: np.ndarray  # (n_windows + cells per window - 1,) speech-band level of each hop-long cell, dB
    tracks: list[VoiceTrack]  # one per voice, in the order the voices were given
    stage_s: dict[str, float]  # wall seconds spent in each stage (decode, features, encoder, search, and resample
    # where the encoder's thread resamples; the decoding has a thread of its own, so they overlap) and waiting
    # (the encoder's thread, for audio)
    note: str = ""  # one line for the user about the film (shorter than one window, stretches without audio), or ""
    audio: AudioParams | None = None  # the front end the windows were cut with
    # (start_s, end_s) film stretches without audio (a late start, gaps in the audio's timestamps), filled
    # with silence so that times follow the film (audio.decode_blocks)
    gaps: tuple[tuple[float, float], ...] = ()

    @property
    def segments(self) -> list[Segment]:
        """Every voice's segments, by start time."""
        return sorted((s for t in self.tracks for s in t.segments), key=lambda s: (s.start_s, s.end_s, s.label))


def _check_voices(voices: Sequence[Voice]) -> None:
    if not voices:
        raise SpeakertagError("no voice to tag")
    audio = voices[0].model.params.audio
    for v in voices[1:]:
        if v.model.params.audio != audio:
            raise SpeakertagError(f"voices {voices[0].name!r} and {v.name!r} use different audio front ends; "
                                  "tag them in separate runs")
    names = [v.name for v in voices]
    if len(set(names)) < len(names):
        raise SpeakertagError(f"two voices have the same name: {', '.join(names)}; give each its own label")


def cpu_count() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def _core_left_for_decoding() -> Iterator[None]:
    """torch's threads lowered, while tagging, to one fewer than the CPUs (at least one): the
    decoding thread keeps a core of its own, instead of taking turns with the encoder's threads
    (docs/experiments.md#the-figures-behind-the-defaults-issue-36)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, cpu_count() - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class DecodingPlan:
    """How tag() shares a film's work between its two threads (and a decoding process)."""
    in_child: bool  # decoded in a process of its own (decoder.py), the decoding thread only reading its pipe
    resampling_here: bool  # the encoder's thread resamples; the decoding thread only decodes
    features_with_decoding: bool  # the decoding thread also computes the features


def decoding_plan(info: AudioInfo, channels: str, encoder_fast: bool, n_cpus: int) -> DecodingPlan:
    """The plan for a track that probe() described, heard with `channels`. Two threads: one
    decodes, the other runs the encoder and the search. Torch, FFmpeg and swresample work
    outside the GIL (PyAV takes it back for each decoded frame), so that both cores have work
    the whole run. The stages between go with the lighter of the two: the features with the
    decoding where it is light and the encoder is not (float32); the resampling with the
    encoder where the decoder itself is dear (5.1 decoded whole) and the encoder is not
    (bfloat16, a GPU). Elsewhere the decoding thread resamples and the encoder's computes the
    features. A film of decoder.MIN_DURATION_S or more (or of unknown length) is decoded in a
    child process where there are two CPUs or more: the two no longer share the GIL
    (figures: docs/experiments.md#the-figures-behind-the-defaults-issue-36)."""
    cost = decoding_cost(info, channels)
    resampling_here = cost == "decoder" and encoder_fast
    return DecodingPlan(n_cpus > 1 and (info.duration_s is None or info.duration_s >= MIN_DURATION_S),
                        resampling_here, not resampling_here and cost == "light" and not encoder_fast)


def tag(path: str | Path, voices: Voice | Sequence[Voice], options: TagOptions = TagOptions(),
        progress: Callable[[float], None] | None = None, info: AudioInfo | None = None) -> TagResult:
    """Find where each voice speaks in the audio of `path`, in one decode and one pass.

    Every window is embedded once per distinct encoder and scored against every voice's
    memory, with the options' threshold, track, channels and segment rules (exclusive: each
    moment to at most one voice). progress(seconds_done) is called after each batch of
    windows. info: probe(path, options.stream), when the caller has it. Memory use is bounded
    by one decoded block and one batch.
    """
    voices = [options.applied(v) for v in ([voices] if isinstance(voices, Voice) else voices)]
    _check_voices(voices)
    stream, channels = options.stream, options.channels
    a = voices[0].model.params.audio
    encoders = list({id(v.model): v.model for v in voices}.values())  # voices may share an encoder
    scorers = [Scorer(v.memory.embeddings, v.memory.negatives, v.params.top_k, v.params.negative_weight)
               for v in voices]
    thresholds = [options.threshold_of(v) for v in voices]
    stage_s = {"decode": 0.0, "features": 0.0, "encoder": 0.0, "search": 0.0, "waiting": 0.0}
    peak, n_samples = 0.0, 0
    gaps: list[tuple[float, float]] = []  # filled by the decoding thread

    def measured(blocks):
        nonlocal peak, n_samples
        for block in blocks:
            peak = max(peak, float(np.abs(block).max(initial=0.0)))
            n_samples += len(block)
            yield block

    plan = decoding_plan(info or probe(path, stream), channels, all(m.embeds_fast for m in encoders), cpu_count())
    in_child, resampling_here = plan.in_child, plan.resampling_here
    batch_windows = voices[0].params.batch_windows
    scores: list[list[np.ndarray]] = [[] for _ in voices]
    short: list[list[np.ndarray]] = [[] for _ in voices]
    levels, last_levels = [], np.zeros(0, np.float32)  # cell j's level from window j; the last window's others
    with _core_left_for_decoding():
        if resampling_here:
            stage_s["resample"] = 0.0
            source = (decoded_in_child(path, stream, channels, gaps=gaps) if in_child else
                      source_blocks(path, stream, channels=channels, gaps=gaps))
            arriving = _timed(_prefetch(_timed(source, stage_s, "decode")), stage_s, "waiting")
            blocks = measured(to_model_rate(arriving, a.sample_rate_hz, path))
            batches = _featured(blocks, a, batch_windows, stage_s, "resample")  # the waiting too: taken out below
        else:
            decoded = (decoded_in_child(path, stream, channels, a.sample_rate_hz, gaps) if in_child else
                       to_model_rate(source_blocks(path, stream, channels=channels, gaps=gaps), a.sample_rate_hz,
                                     path))
            blocks = measured(_timed(decoded, stage_s, "decode"))
            if plan.features_with_decoding:
                batches = _timed(_prefetch(_featured(blocks, a, batch_windows, stage_s, None)), stage_s, "waiting")
            else:
                batches = _featured(_prefetch(blocks), a, batch_windows, stage_s, "waiting")
        for first, windows, first_levels, last_levels in batches:
            levels.append(first_levels)
            for out, out_short, (sc, sh) in zip(scores, short, _score_batch(voices, encoders, scorers, thresholds,
                                                                             windows, a.hop_frames, stage_s)):
                out.append(sc)
                if sh is not None:
                    out_short.append(sh)
            if progress:
                progress((first + len(windows)) * a.hop_s)
    if resampling_here:
        stage_s["resample"] -= stage_s["waiting"]
    duration_s = n_samples / a.sample_rate_hz
    if peak == 0.0:
        raise SpeakertagError(f"{path} is silent: its audio track holds only digital silence")
    note = ""
    if not scores[0]:  # a valid film in which nothing can be found: no segments, and a note saying why
        # Rounded down and up, so that the figures never contradict the comparison.
        note = (f"{path}: {math.floor(duration_s * 1000 + 1e-6) / 1000:.3f} s of audio, shorter than one window "
                f"({math.ceil(a.window_samples / a.sample_rate_hz * 1000) / 1000:.3f} s): no segments")
    note = "; ".join(n for n in (note, gaps_note(path, gaps)) if n)
    cell_db = np.concatenate(levels + [last_levels])
    tracks = []
    for v, thr, parts, short_parts in zip(voices, thresholds, scores, short):
        window_scores = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        short_scores = (np.concatenate(short_parts) if short_parts else np.zeros(0, np.float32)) \
            if v.params.short_edges else None
        edge = v.memory.edge_threshold
        tracks.append(VoiceTrack(v.name, thr, edge, window_scores,
                                 to_segments(window_scores, thr, a, v.params, v.name, duration_s, cell_db, edge,
                                             short_scores),
                                 v.params, short_scores, "" if v.folder is None else str(v.folder)))
    result = TagResult(str(path), duration_s, a.window_s, a.hop_s, cell_db, tracks, stage_s, note, a, tuple(gaps))
    return exclusive(result) if options.exclusive else result


def gaps_note(path, gaps: Sequence[tuple[float, float]]) -> str:
    """One line naming the film's stretches without audio (TagResult.gaps), or "" when there are none."""
    if not gaps:
        return ""
    spans = ", ".join(f"{start_s:.1f}-{end_s:.1f} s" for start_s, end_s in gaps[:3])
    more = f" and {len(gaps) - 3} more" if len(gaps) > 3 else ""
    return (f"{path}: no audio at {spans}{more} of the film (a late start or gaps in its timestamps): "
            "times follow the film, and nothing is found there")


def exclusive(result: TagResult) -> TagResult:
    """`result` with each moment given to at most one voice: where several voices' segments
    meet, the voice whose cell score is furthest above its own threshold keeps the cell, and
    every voice's segments are re-formed from the cells it kept (merged, length-filtered).
    No two segments of the result overlap; one voice's result is returned as it is."""
    if len(result.tracks) < 2 or not len(result.tracks[0].window_scores):
        return result
    a = result.audio
    per_voice = [(*segment_runs(t.window_scores, t.threshold, a, t.params, result.cell_db, t.edge_threshold),
                  t) for t in result.tracks]
    formed = exclusive_segments([(cells, t.threshold, found, t.params, t.name) for cells, found, t in per_voice],
                                a.hop_s, result.duration_s)
    return replace(result, tracks=[replace(t, segments=s) for t, s in zip(result.tracks, formed)])


class LiveTagger:
    """Tagging as the audio comes (a stream, a growing file): each voice's segments are given
    out as they close (segments.SegmentStream), at most about live.max_delay_s of audio after
    their end, and memory stays flat: only the last few window scores and the cells an open
    segment still needs are kept.

        live = LiveTagger(voices)
        for first, windows in live.windows(source):
            closed = live.add(windows)   # segments, by start time
        closed = live.finish()           # also after an interruption: what was found
    """

    def __init__(self, voices: Voice | Sequence[Voice], options: TagOptions = TagOptions(),
                 live: LiveParams = LiveParams()):
        self.voices = [options.applied(v) for v in ([voices] if isinstance(voices, Voice) else voices)]
        _check_voices(self.voices)
        self.audio, self.live, self.options = self.voices[0].model.params.audio, live, options
        self.encoders = list({id(v.model): v.model for v in self.voices}.values())
        self.scorers = [Scorer(v.memory.embeddings, v.memory.negatives, v.params.top_k, v.params.negative_weight)
                        for v in self.voices]
        self.thresholds = [options.threshold_of(v) for v in self.voices]
        self.streams = [SegmentStream(t, self.audio, v.params, v.name, v.memory.edge_threshold, live.max_delay_s)
                        for v, t in zip(self.voices, self.thresholds)]
        self.n_samples = 0  # decoded so far, at the model rate
        self.gaps: list[tuple[float, float]] = []  # as TagResult.gaps, so far
        self.last_levels = np.zeros(0, np.float32)  # levels of the last window's cells after its first

    @property
    def duration_s(self) -> float:
        """Seconds of audio decoded so far."""
        return self.n_samples / self.audio.sample_rate_hz

    def windows(self, source) -> Iterator[tuple[int, "torch.Tensor"]]:
        """Batches of windows of `source` (a path or a file object, see audio.decode_blocks),
        decoded live.block_s at a time, of the options' track and channels: a window is embedded
        as soon as its audio is in."""
        def counted(blocks):
            for block in blocks:
                self.n_samples += len(block)
                yield block

        blocks = counted(decode_blocks(source, self.audio.sample_rate_hz, self.options.stream, self.live.block_s,
                                       self.options.channels, self.gaps))
        return stream_windows(blocks, self.audio, self.voices[0].params.batch_windows)

    def add(self, windows) -> list[Segment]:
        """Embed and score the next batch of windows (n, n_mels, window_frames); the segments it closes."""
        a = self.audio
        levels = cell_levels_db(windows[:, :, :a.hop_frames], a).numpy()[:, 0]
        scored = _score_batch(self.voices, self.encoders, self.scorers, self.thresholds, windows, a.hop_frames)
        self.last_levels = cell_levels_db(windows[-1:, :, a.hop_frames:], a).numpy()[0]
        closed = [s for st, (sc, sh) in zip(self.streams, scored) for s in st.push(sc, levels, sh)]
        return sorted(closed, key=lambda s: (s.start_s, s.end_s, s.label))

    def finish(self) -> list[Segment]:
        """The input has ended (or was interrupted): the segments still open, clipped to what was decoded."""
        closed = [s for st in self.streams for s in st.finish(self.last_levels, self.duration_s)]
        return sorted(closed, key=lambda s: (s.start_s, s.end_s, s.label))
