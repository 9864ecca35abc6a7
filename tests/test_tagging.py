"""Tagging real audio with a real (tiny) model: scores, segments, pairing checks."""


import json
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

import speakertag.tagging
from speakertag.audio import AudioInfo, load_audio, probe, source_blocks
from speakertag.errors import SpeakertagError
from speakertag.features import cell_levels_db, log_mel
from speakertag.memory import load_memory
from speakertag.segments import cell_scores
from speakertag.tagging import DecodingPlan, TagOptions, check_pair, decoding_plan, load_voice, tag
from conftest import train_tiny


def test_tag_example_film(tiny_model_dir, example):
    voice = load_voice(tiny_model_dir)
    r = tag(example / "movie01.mp4", voice)
    a = voice.model.params.audio
    assert r.duration_s == pytest.approx(336.2, abs=0.1)
    (track,) = r.tracks
    assert len(track.window_scores) == 1 + int((r.duration_s - a.window_s) / a.hop_s + 1e-6)
    assert np.all(np.isfinite(track.window_scores))
    assert track.threshold == voice.memory.threshold and track.name == "tiny"
    for s in r.segments:
        assert 0 <= s.start_s < s.end_s <= r.duration_s and s.label == "tiny"
    assert set(r.stage_s) == {"decode", "features", "encoder", "search", "waiting"}
    assert track.edge_threshold == voice.memory.edge_threshold is not None


def test_cell_levels_of_a_film(tiny_model_dir, minute_of_film):
    """The levels tag() streams are those of the whole input's frames, one per scored cell;
    the target's speech (50.96-69.09 s of the film) is louder than the quiet stretch before it."""
    voice = load_voice(tiny_model_dir)
    r = tag(minute_of_film, voice)
    a = voice.model.params.audio
    assert len(r.cell_db) == len(cell_scores(r.tracks[0].window_scores, a))
    frames = log_mel(torch.from_numpy(load_audio(minute_of_film, a.sample_rate_hz)), a)
    whole = cell_levels_db(frames[None, :, :len(r.cell_db) * a.hop_frames], a)[0].numpy()
    np.testing.assert_allclose(r.cell_db, whole, atol=1e-3)
    speech = r.cell_db[int(12 / a.hop_s):int(28 / a.hop_s)]
    assert np.median(speech) > np.median(r.cell_db[:int(10 / a.hop_s)])


@pytest.mark.slow  # the example film tagged twice
def test_threshold_orders_segments(tiny_model_dir, example):
    voice = load_voice(tiny_model_dir)
    low = tag(example / "movie01.mp4", voice, TagOptions(threshold=-2.0))  # scores lie in [-1.5, 1.5]
    high = tag(example / "movie01.mp4", voice, TagOptions(threshold=2.0))
    # The audio after the last whole window is not scored: at most one window minus a hop.
    a = voice.model.params.audio
    assert len(low.segments) == 1 and low.segments[0].start_s == 0.0
    assert low.duration_s - (a.window_s - a.hop_s) <= low.segments[0].end_s <= low.duration_s
    assert high.segments == []


@pytest.mark.slow  # trains a second model
def test_memory_of_another_model_is_refused(tiny_model_dir, tmp_path):
    other = train_tiny(tmp_path / "other", tmp_path / "clips", seed=1)
    voice = load_voice(tiny_model_dir)
    with pytest.raises(SpeakertagError, match="another model"):
        check_pair(voice.model, load_memory(other))



def test_a_params_mismatch_names_what_differs(tiny_model_dir):
    """Issue 34, case 14: the same encoder's fingerprint, another front end: say which number."""
    voice = load_voice(tiny_model_dir)
    a = voice.memory.params.audio
    memory = replace(voice.memory, params=replace(voice.memory.params, audio=replace(a, hop_frames=a.hop_frames + 1)))
    with pytest.raises(SpeakertagError, match=rf"audio.hop_frames: memory {a.hop_frames + 1}, model {a.hop_frames}"):
        check_pair(voice.model, memory)


@pytest.fixture(scope="module")
def minute_of_film(tmp_path_factory, example):
    """60 s of the example film around a target segment (50.96-69.09 s), as a wav at the model rate."""
    rate = 22050
    path = tmp_path_factory.mktemp("minute") / "minute.wav"
    sf.write(str(path), load_audio(example / "movie01.mp4", rate)[40 * rate:100 * rate], rate)
    return path


def test_streaming_equals_whole_file(tiny_model_dir, minute_of_film, monkeypatch):
    """Decoding in blocks changes nothing: tag() with 3.7 s blocks and with a single block."""
    voice = load_voice(tiny_model_dir)
    threshold = float(np.mean(tag(minute_of_film, voice).tracks[0].window_scores))  # so that there are segments
    results, n_blocks = {}, {}
    for block_s in (3.7, 1000.0):  # many blocks, cut mid-window and mid-frame; one block
        def blocks(*args, block_s=block_s, **kwargs):
            for block in source_blocks(*args, block_s=block_s, **kwargs):
                n_blocks[block_s] = n_blocks.get(block_s, 0) + 1
                yield block
        monkeypatch.setattr(speakertag.tagging, "source_blocks", blocks)
        results[block_s] = tag(minute_of_film, voice, TagOptions(threshold=threshold))
    assert n_blocks == {3.7: 17, 1000.0: 1}
    many, one = results[3.7], results[1000.0]
    np.testing.assert_allclose(many.tracks[0].window_scores, one.tracks[0].window_scores, atol=1e-5)
    np.testing.assert_allclose(many.cell_db, one.cell_db, atol=1e-3)
    # Same segments; a segment's mean score may differ in the 7th digit (windows batched differently).
    assert one.segments and [(s.start_s, s.end_s, s.label) for s in many.segments] == \
        [(s.start_s, s.end_s, s.label) for s in one.segments]
    assert [s.score for s in many.segments] == pytest.approx([s.score for s in one.segments], abs=1e-5)
    assert many.duration_s == one.duration_s == 60.0


@pytest.mark.parametrize("layout", ["stereo", "5.1"])
def test_where_the_threads_split_the_work_changes_nothing(tiny_model_dir, minute_of_film, tmp_path, monkeypatch,
                                                          layout):
    """The features go to the decoding thread with a float32 encoder on light decoding, the
    resampling to the encoder's thread with a fast encoder on 5.1, and a long film is decoded
    in a child process (decoder.py): the same scores every way."""
    from conftest import write_container
    from speakertag.model import Model

    x = load_audio(minute_of_film, 48000)[:20 * 48000]
    channels = np.stack([x, 0.5 * x] if layout == "stereo" else [0.1 * x, 0.1 * x, x, 0 * x, 0.1 * x, 0.1 * x])
    film = write_container(tmp_path / "film.mkv", [("ac3", channels, 48000)])
    voice = load_voice(tiny_model_dir)
    results = {}
    for fast in (False, True):
        for child_from_s in (1e9, 0.0):
            monkeypatch.setattr(Model, "embeds_fast", property(lambda self, fast=fast: fast))
            monkeypatch.setattr(speakertag.tagging, "MIN_DURATION_S", child_from_s)
            results[fast, child_from_s] = tag(film, voice)
    slow = results[False, 1e9]
    for (fast, _), r in results.items():
        np.testing.assert_array_equal(r.tracks[0].window_scores, slow.tracks[0].window_scores)
        np.testing.assert_array_equal(r.cell_db, slow.cell_db)
        assert r.duration_s == pytest.approx(20.0, abs=0.05)
        assert ("resample" in r.stage_s) == (fast and layout == "5.1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cpu_and_cuda_agree(tiny_model_dir, minute_of_film):
    on_cpu = tag(minute_of_film, load_voice(tiny_model_dir, "cpu"))
    on_gpu = tag(minute_of_film, load_voice(tiny_model_dir, "cuda"))
    np.testing.assert_allclose(on_gpu.tracks[0].window_scores, on_cpu.tracks[0].window_scores, atol=1e-3)
    assert [(s.start_s, s.end_s, s.label) for s in on_gpu.segments] == \
        [(s.start_s, s.end_s, s.label) for s in on_cpu.segments]
    assert [s.score for s in on_gpu.segments] == pytest.approx([s.score for s in on_cpu.segments], abs=1e-3)


# --- times on the film's timeline (issue 34) --------------------------------------------------

def segments_within_a_cell(got, expected, cell_s: float):
    """The same segments, each edge within one cell."""
    assert len(got) == len(expected), (got, expected)
    for g, e in zip(got, expected):
        assert abs(g.start_s - e.start_s) <= cell_s + 1e-3 and abs(g.end_s - e.end_s) <= cell_s + 1e-3, (got, expected)


@pytest.fixture(scope="module")
def speech_piece(minute_of_film) -> np.ndarray:
    """20 s of the example film at 22050 Hz, the target speaking from about 6 s on."""
    x, rate = sf.read(str(minute_of_film), dtype="float32")
    return x[5 * rate:25 * rate]


@pytest.mark.parametrize("case", ["mp4 late 30 s", "mp4 late 7.3 s", "ts gap 10 s"])
def test_segment_times_follow_the_film(tiny_model_dir, speech_piece, tmp_path, monkeypatch, case):
    """Audio that starts late (MP4) or has a gap in its timestamps (MPEG-TS) is tagged on the
    film's timeline: as a WAV of the same audio with silence in the same place, within one cell,
    and decoded in this process or in a child alike; nothing is found inside the gap."""
    from conftest import write_timed
    from speakertag.batch import render_output

    rate, x = 22050, speech_piece
    k = 1152 * 96  # whole MP2 frames: about 5 s
    if case.startswith("mp4"):
        start_s = 30.0 if "30" in case else 7.3
        film = write_timed(tmp_path / "film.mp4", [(start_s, x)], rate, "aac", video_s=start_s + 25)
        timeline, gap_s = [np.zeros(round(start_s * rate)), x], (0.0, start_s)
    else:
        film = write_timed(tmp_path / "film.ts", [(0.0, x[:k]), (k / rate + 10.0, x[k:])], rate, "mp2")
        timeline, gap_s = [x[:k], np.zeros(10 * rate), x[k:]], (k / rate, k / rate + 10.0)
    reference = tmp_path / "reference.wav"  # no timestamps: the samples as they are
    sf.write(str(reference), np.concatenate(timeline), rate, subtype="FLOAT")
    voice = load_voice(tiny_model_dir)
    a = voice.model.params.audio
    expected = tag(reference, voice)
    threshold = float(np.median(expected.tracks[0].window_scores))  # so that there are segments
    expected = tag(reference, voice, TagOptions(threshold=threshold))
    assert expected.segments and not expected.gaps
    for child_from_s in (1e9, 0.0):
        monkeypatch.setattr(speakertag.tagging, "MIN_DURATION_S", child_from_s)
        r = tag(film, voice, TagOptions(threshold=threshold))
        assert len(r.gaps) == 1 and r.gaps[0] == pytest.approx(gap_s, abs=0.1)
        assert "no audio at" in r.note and r.duration_s == pytest.approx(expected.duration_s, abs=0.1)
        doc = json.loads(render_output("json", film, r))
        assert doc["gaps"] == [[round(a_s, 3), round(b_s, 3)] for a_s, b_s in r.gaps]
        segments_within_a_cell(r.segments, expected.segments, a.hop_s)
        everything = tag(film, voice, TagOptions(threshold=-2.0)).segments  # every cell with sound in it
        for s in everything:
            assert s.end_s <= r.gaps[0][0] + a.hop_s or s.start_s >= r.gaps[0][1] - a.hop_s, (s, r.gaps)
        assert everything[-1].start_s == pytest.approx(r.gaps[0][1], abs=a.hop_s)


@pytest.mark.slow  # a minute of film tagged three times, in a file and live
def test_short_edges_in_a_file_and_live(tiny_model_dir, minute_of_film):
    """tag.short_edges: two short-window scores per window, edges that move, and a live stream
    (blocks of its own, never forced) that gives the file's segments."""
    from dataclasses import replace

    from speakertag.params import LiveParams
    from speakertag.segments import short_windows_needed
    from speakertag.tagging import LiveTagger, Voice

    trained = load_voice(tiny_model_dir)
    plain = Voice(trained.model, trained.memory, tag_params=replace(trained.params, short_edges=False))
    voice = Voice(trained.model, trained.memory, tag_params=replace(trained.params, short_edges=True))
    threshold = float(np.mean(tag(minute_of_film, plain).tracks[0].window_scores))
    r = tag(minute_of_film, voice, TagOptions(threshold=threshold))
    (track,) = r.tracks
    assert track.short_scores.shape == (2 * len(track.window_scores),)
    # scored wherever an edge may read them (near a window at the threshold), -inf only elsewhere
    needed = np.repeat(short_windows_needed(track.window_scores, threshold, voice.model.params.audio), 2)
    assert needed.any() and np.isfinite(track.short_scores[needed]).all()
    assert np.all(np.isfinite(track.short_scores) | (track.short_scores == -np.inf))
    assert tag(minute_of_film, plain, TagOptions(threshold=threshold)).tracks[0].short_scores is None
    live = LiveTagger(voice, TagOptions(threshold=threshold), replace(LiveParams(), max_delay_s=None))
    got = []
    for _, windows in live.windows(minute_of_film):
        got += live.add(windows)
    got += live.finish()
    assert r.segments and len(got) == len(r.segments)
    for a, b in zip(got, r.segments):
        assert (a.start_s, a.end_s) == (pytest.approx(b.start_s, abs=0.002), pytest.approx(b.end_s, abs=0.002))


def test_decoding_plan_needs_no_audio():
    """How tag() shares the work is planned from probe()'s description alone."""
    five_one = AudioInfo("film.mkv", 7200.0, 48000, 6, "ac3", 0, ("FL", "FR", "FC", "LFE", "SL", "SR"))
    assert decoding_plan(five_one, "auto", True, 2) == DecodingPlan(True, True, False)  # resampled by the encoder's
    assert decoding_plan(five_one, "auto", False, 2) == DecodingPlan(True, False, False)
    assert decoding_plan(five_one, "average", False, 2) == DecodingPlan(True, False, True)  # the decoder mixes down
    assert not decoding_plan(five_one, "auto", True, 1).in_child  # one CPU: no second process
    stereo = AudioInfo("film.wav", 60.0, 44100, 2, "WAV", None)
    assert decoding_plan(stereo, "auto", False, 2) == DecodingPlan(False, False, True)
    assert decoding_plan(replace(stereo, duration_s=None), "coherent", True, 2) == DecodingPlan(True, False, False)


def test_a_probed_film_is_not_probed_again(tiny_model_dir, minute_of_film, monkeypatch):
    voice = load_voice(tiny_model_dir)
    info = probe(minute_of_film)
    expected = tag(minute_of_film, voice)

    def no_probe(*args, **kwargs):
        raise AssertionError("probed again")
    monkeypatch.setattr(speakertag.tagging, "probe", no_probe)
    again = tag(minute_of_film, voice, TagOptions(), info=info)
    np.testing.assert_array_equal(again.tracks[0].window_scores, expected.tracks[0].window_scores)
    assert again.tracks[0].folder == str(tiny_model_dir)
