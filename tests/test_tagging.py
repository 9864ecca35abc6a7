"""Tagging real audio with a real (tiny) model: scores, segments, pairing checks."""

from dataclasses import replace

import numpy as np
import pytest

from speakertag.errors import SpeakertagError
from speakertag.memory import load_memory
from speakertag.tagging import Voice, check_pair, load_voice, tag
from conftest import train_tiny


def test_tag_example_film(tiny_model_dir, example):
    voice = load_voice(tiny_model_dir)
    r = tag(example / "movie01.mp4", voice)
    a = voice.model.params.audio
    assert r.duration_s == pytest.approx(336.2, abs=0.1)
    assert len(r.window_scores) == 1 + int((r.duration_s - a.window_s) / a.hop_s + 1e-6)
    assert np.all(np.isfinite(r.window_scores))
    assert r.threshold == voice.memory.threshold
    for s in r.segments:
        assert 0 <= s.start_s < s.end_s <= r.duration_s and s.label == "tiny"
    assert set(r.stage_s) == {"decode", "features", "encoder", "search"}


def test_threshold_orders_segments(tiny_model_dir, example):
    voice = load_voice(tiny_model_dir)
    low = tag(example / "movie01.mp4", voice, threshold=-2.0)  # scores lie in [-1.5, 1.5]
    high = tag(example / "movie01.mp4", voice, threshold=2.0)
    # The audio after the last whole window is not scored: at most one window minus a hop.
    a = voice.model.params.audio
    assert len(low.segments) == 1 and low.segments[0].start_s == 0.0
    assert low.duration_s - (a.window_s - a.hop_s) <= low.segments[0].end_s <= low.duration_s
    assert high.segments == []


def test_memory_of_another_model_is_refused(tiny_model_dir, tmp_path):
    other = train_tiny(tmp_path / "other", tmp_path / "clips", seed=1)
    voice = load_voice(tiny_model_dir)
    with pytest.raises(SpeakertagError, match="another model"):
        check_pair(voice.model, load_memory(other))
