"""The one place the tagging stages meet: decode -> windows -> embed -> search -> segments."""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .audio import decode_blocks
from .errors import SpeakertagError
from .features import cell_levels_db, stream_windows
from .memory import Memory, load_memory
from .model import Model, embed, load_model
from .params import TagParams
from .scoring import Scorer
from .segments import Segment, to_segments


@dataclass(frozen=True)
class Voice:
    """A model and its memory, checked to belong together (the memory's embeddings are the
    model's), with the rules for its segments: the tag params of the memory's checksummed
    params object, with which its threshold was calibrated (the model's copy is not used)."""
    model: Model
    memory: Memory
    label: str = ""  # the name on its segments; "" means the memory's (set by `train --name`)
    tag_params: TagParams | None = None  # None means the memory's own

    def __post_init__(self):
        check_pair(self.model, self.memory)

    @property
    def name(self) -> str:
        return self.label or self.memory.name

    @property
    def params(self) -> TagParams:
        """The tagging params: the memory's, with which its threshold was calibrated, unless overridden."""
        return self.tag_params or self.memory.params.tag


def load_voice(directory: str | Path, device: str | None = None) -> Voice:
    """Load DIR/model.pt and DIR/memory.npz; refuses a memory made by another model.
    device: "cpu", "cuda" or None / "auto" (CUDA when available)."""
    return Voice(load_model(directory, device), load_memory(directory))


def check_pair(model: Model, memory: Memory) -> None:
    """Refuse a memory whose embeddings another encoder made (another fingerprint, front end
    or architecture). Its train and tag params may differ from the model's (a memory of
    another training with the same encoder): tagging uses the memory's."""
    if (memory.model_fingerprint != model.fingerprint or memory.params.audio != model.params.audio
            or memory.params.encoder != model.params.encoder):
        raise SpeakertagError(f"the memory was made by another model (fingerprint {memory.model_fingerprint}, "
                              f"model {model.fingerprint})")


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
                    return
                q.put(item)
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

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


@dataclass(frozen=True)
class VoiceTrack:
    """What one voice's pass over a film found."""
    name: str
    threshold: float
    edge_threshold: float | None  # windows scoring this much can widen a segment (None: no edge refinement)
    window_scores: np.ndarray  # (n_windows,) score of window j, which starts at j * hop_s
    segments: list[Segment]


@dataclass(frozen=True)
class TagResult:
    input: str
    duration_s: float
    window_s: float  # each window score covers [j * hop_s, j * hop_s + window_s)
    hop_s: float
    cell_db: np.ndarray  # (n_windows + cells per window - 1,) speech-band level of each hop-long cell, dB
    tracks: list[VoiceTrack]  # one per voice, in the order the voices were given
    stage_s: dict[str, float]  # wall seconds spent in decode, features, encoder, search
    note: str = ""  # one line for the user about the film (shorter than one window), or ""

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


def tag(path: str | Path, voices: Voice | Sequence[Voice], threshold: float | None = None,
        stream: int | None = None, progress: Callable[[float], None] | None = None) -> TagResult:
    """Find where each voice speaks in the audio of `path`, in one decode and one pass.

    Every window is embedded once per distinct encoder and scored against every voice's
    memory. threshold: None uses each memory's calibrated one; a number applies to all.
    progress(seconds_done) is called after each batch of windows. Memory use is bounded by
    one decoded block and one batch.
    """
    voices = [voices] if isinstance(voices, Voice) else list(voices)
    _check_voices(voices)
    a = voices[0].model.params.audio
    encoders = list({id(v.model): v.model for v in voices}.values())  # voices may share an encoder
    scorers = [Scorer(v.memory.embeddings, v.memory.negatives, v.params.top_k, v.params.negative_weight)
               for v in voices]
    stage_s = {"decode": 0.0, "features": 0.0, "encoder": 0.0, "search": 0.0}
    peak, n_samples = 0.0, 0

    def measured(blocks):
        nonlocal peak, n_samples
        for block in blocks:
            peak = max(peak, float(np.abs(block).max(initial=0.0)))
            n_samples += len(block)
            yield block

    blocks = measured(_timed(_prefetch(decode_blocks(path, a.sample_rate_hz, stream)), stage_s, "decode"))
    scores: list[list[np.ndarray]] = [[] for _ in voices]
    levels, last_levels = [], np.zeros(0, np.float32)  # cell j's level from window j; the last window's others
    for first, windows in _timed(stream_windows(blocks, a, voices[0].params.batch_windows), stage_s, "features"):
        t = time.perf_counter()
        levels.append(cell_levels_db(windows[:, :, :a.hop_frames], a).numpy()[:, 0])
        last_levels = cell_levels_db(windows[-1:, :, a.hop_frames:], a).numpy()[0]
        stage_s["features"] += time.perf_counter() - t
        t = time.perf_counter()
        emb = {id(m): embed(m, windows, a.hop_frames).numpy() for m in encoders}
        stage_s["encoder"] += time.perf_counter() - t
        t = time.perf_counter()
        for out, v, scorer in zip(scores, voices, scorers):
            out.append(scorer(emb[id(v.model)]))
        stage_s["search"] += time.perf_counter() - t
        if progress:
            progress((first + len(windows)) * a.hop_s)
    stage_s["features"] -= stage_s["decode"]  # the features' timer also ran while decoding
    duration_s = n_samples / a.sample_rate_hz
    if peak == 0.0:
        raise SpeakertagError(f"{path} is silent: its audio track holds only digital silence")
    note = ""
    if not scores[0]:  # a valid film in which nothing can be found: no segments, and a note saying why
        # Rounded down and up, so that the figures never contradict the comparison.
        note = (f"{path}: {math.floor(duration_s * 1000 + 1e-6) / 1000:.3f} s of audio, shorter than one window "
                f"({math.ceil(a.window_samples / a.sample_rate_hz * 1000) / 1000:.3f} s): no segments")
    cell_db = np.concatenate(levels + [last_levels])
    tracks = []
    for v, parts in zip(voices, scores):
        window_scores = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        thr = v.memory.threshold if threshold is None else threshold
        edge = v.memory.edge_threshold
        tracks.append(VoiceTrack(v.name, thr, edge, window_scores,
                                 to_segments(window_scores, thr, a, v.params, v.name, duration_s, cell_db, edge)))
    return TagResult(str(path), duration_s, a.window_s, a.hop_s, cell_db, tracks, stage_s, note)
