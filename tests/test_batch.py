"""Batch helpers: output names and loading a voice with options applied."""

from pathlib import Path

from speakertag.batch import VoiceSpec, output_paths


def test_output_paths_are_unique_and_ordered(tmp_path):
    inputs = [Path("a/ep1.mkv"), Path("b/ep1.mp4"), Path("c/EP1.ts"), Path("d/ep2.mkv")]
    assert [p.name for p in output_paths(inputs, tmp_path, ".srt")] == ["ep1.srt", "ep1-2.srt", "EP1-3.srt", "ep2.srt"]
    assert all(p.parent == tmp_path for p in output_paths(inputs, tmp_path, ".srt"))


def test_voice_spec_applies_options(tiny_model_dir):
    (voice,) = VoiceSpec((tiny_model_dir,), min_gap_s=2.5).load()
    assert voice.params.min_gap_s == 2.5
    assert voice.params.min_duration_s == voice.model.params.tag.min_duration_s
