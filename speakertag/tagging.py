"""The one place the tagging stages meet: decode -> windows -> embed -> search -> segments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .audio import decode_blocks, probe
from .errors import SpeakertagError
from .features import stream_windows
from .memory import Memory, build_index, load_memory
from .model import Model, embed, load_model
from .params import TagParams
from .scoring import top_k_mean
from .segments import Segment, to_segments


@dataclass(frozen=True)
class Voice:
    """A model and its memory, checked to belong together."""
    model: Model
    memory: Memory

    @property
    def name(self) -> str:
        return self.memory.name


def load_voice(directory: str | Path, device: str = "cpu") -> Voice:
    """Load DIR/model.pt and DIR/memory.npz; refuses a memory made by another model."""
    model = load_model(directory, device)
    memory = load_memory(directory)
    check_pair(model, memory)
    return Voice(model, memory)


def check_pair(model: Model, memory: Memory) -> None:
    if memory.model_fingerprint != model.fingerprint or memory.params.audio != model.params.audio:
        raise SpeakertagError(f"the memory was made by another model (fingerprint {memory.model_fingerprint}, "
                              f"model {model.fingerprint})")


@dataclass(frozen=True)
class TagResult:
    input: str
    duration_s: float
    threshold: float
    window_scores: np.ndarray  # (n_windows,) top-k mean cosine; window j starts at j * hop_s
    segments: list[Segment]


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
    probe(path, stream)  # fail early on a missing stream or unreadable file
    index = build_index(memory.embeddings)
    peak = 0.0
    n_samples = 0

    def blocks():
        nonlocal peak, n_samples
        for block in decode_blocks(path, a.sample_rate_hz, stream):
            peak = max(peak, float(np.abs(block).max(initial=0.0)))
            n_samples += len(block)
            yield block

    scores = []
    for first, windows in stream_windows(blocks(), a, tp.batch_windows):
        scores.append(top_k_mean(index, embed(model, windows).numpy(), tp.top_k))
        if progress:
            progress((first + len(windows)) * a.hop_s)
    duration_s = n_samples / a.sample_rate_hz
    if peak == 0.0:
        raise SpeakertagError(f"{path} is silent: its audio track holds only digital silence")
    if not scores:
        raise SpeakertagError(f"{path} is too short: {duration_s:.2f} s, one window is {a.window_s:.2f} s")
    window_scores = np.concatenate(scores)
    segments = to_segments(window_scores, threshold, a, tp, voice.name, duration_s)
    return TagResult(str(path), duration_s, threshold, window_scores, segments)
