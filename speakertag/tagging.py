"""The one place the tagging stages meet: decode -> windows -> embed -> search -> segments."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .audio import decode_blocks
from .errors import SpeakertagError
from .features import stream_windows
from .memory import Memory, load_memory
from .model import Model, embed, load_model
from .params import TagParams
from .scoring import Scorer
from .segments import Segment, to_segments


@dataclass(frozen=True)
class Voice:
    """A model and its memory, checked to belong together."""
    model: Model
    memory: Memory

    @property
    def name(self) -> str:
        return self.memory.name


def load_voice(directory: str | Path, device: str | None = None) -> Voice:
    """Load DIR/model.pt and DIR/memory.npz; refuses a memory made by another model.
    device: "cpu", "cuda" or None / "auto" (CUDA when available)."""
    model = load_model(directory, device)
    memory = load_memory(directory)
    check_pair(model, memory)
    return Voice(model, memory)


def check_pair(model: Model, memory: Memory) -> None:
    if memory.model_fingerprint != model.fingerprint or memory.params.audio != model.params.audio:
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
class TagResult:
    input: str
    duration_s: float
    threshold: float
    window_scores: np.ndarray  # (n_windows,) top-k mean cosine; window j starts at j * hop_s
    segments: list[Segment]
    stage_s: dict[str, float]  # wall seconds spent in decode, features, encoder, search


def tag(path: str | Path, voice: Voice, threshold: float | None = None, stream: int | None = None,
        tag_params: TagParams | None = None, progress: Callable[[float], None] | None = None) -> TagResult:
    """Find where `voice` speaks in the audio of `path`.

    threshold: None uses the memory's calibrated one. progress(seconds_done) is called
    after each batch of windows. Memory use is bounded by one decoded block and one batch.
    """
    model, memory = voice.model, voice.memory
    a = model.params.audio
    tp = tag_params or model.params.tag
    threshold = memory.threshold if threshold is None else threshold
    scorer = Scorer(memory.embeddings, memory.negatives, tp.top_k, tp.negative_weight)
    stage_s = {"decode": 0.0, "features": 0.0, "encoder": 0.0, "search": 0.0}
    peak, n_samples = 0.0, 0

    def measured(blocks):
        nonlocal peak, n_samples
        for block in blocks:
            peak = max(peak, float(np.abs(block).max(initial=0.0)))
            n_samples += len(block)
            yield block

    blocks = measured(_timed(_prefetch(decode_blocks(path, a.sample_rate_hz, stream)), stage_s, "decode"))
    scores = []
    for first, windows in _timed(stream_windows(blocks, a, tp.batch_windows), stage_s, "features"):
        t = time.perf_counter()
        emb = embed(model, windows, a.hop_frames).numpy()
        stage_s["encoder"] += time.perf_counter() - t
        t = time.perf_counter()
        scores.append(scorer(emb))
        stage_s["search"] += time.perf_counter() - t
        if progress:
            progress((first + len(windows)) * a.hop_s)
    stage_s["features"] -= stage_s["decode"]  # the features' timer also ran while decoding
    duration_s = n_samples / a.sample_rate_hz
    if peak == 0.0:
        raise SpeakertagError(f"{path} is silent: its audio track holds only digital silence")
    if not scores:
        raise SpeakertagError(f"{path} is too short: {duration_s:.2f} s, one window is {a.window_s:.2f} s")
    window_scores = np.concatenate(scores)
    segments = to_segments(window_scores, threshold, a, tp, voice.name, duration_s)
    return TagResult(str(path), duration_s, threshold, window_scores, segments, stage_s)
