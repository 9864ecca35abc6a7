from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf

from conftest import noise, sine, speech_like, write_audio, write_container, write_timed
from speakertag.audio import (MAX_GAP_S, AudioInfo, channel_mix, decode_blocks, decoded_channels, decoding_cost,
                              find_media_files, load_audio, load_span, probe, without_gaps)
from speakertag.errors import SpeakertagError

RATE = 22050
FLAC = "positive/ls_2609__2609-156975-0001.flac"


def dominant_hz(x: np.ndarray, rate_hz: int = RATE) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate_hz / len(x))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


# --- real files -------------------------------------------------------------------------------

def test_example_flac(example):
    info = probe(example / FLAC)
    assert (info.source_rate_hz, info.channels, info.stream_index) == (16000, 1, None)
    x = load_audio(example / FLAC, RATE)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - sf.info(str(example / FLAC)).frames * RATE / 16000) <= 1
    assert 0.01 < np.abs(x).max() <= 1.0


def test_example_mp4(example):
    info = probe(example / "movie01.mp4")
    assert info.duration_s == pytest.approx(336.2, abs=0.5)
    assert (info.source_rate_hz, info.channels, info.codec) == (48000, 2, "aac")
    gaps = []
    x = np.concatenate(list(decode_blocks(example / "movie01.mp4", RATE, gaps=gaps)))
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) / RATE == pytest.approx(336.2, abs=0.1)
    assert gaps == []  # its audio starts with the film, without gaps
    assert np.isfinite(x).all() and 0.05 < np.abs(x).max() <= 1.0


# --- channels ---------------------------------------------------------------------------------

def test_stereo_opposite_channels_cancel(tmp_path):
    s = sine(1.0, RATE)
    x = load_audio(write_audio(tmp_path / "st.wav", np.stack([s, -s], axis=1), RATE, subtype="FLOAT"), RATE)
    assert len(x) == len(s)
    assert np.abs(x).max() < 1e-6


def test_six_channels_are_averaged(tmp_path):
    s = sine(1.0, RATE)
    gains = np.arange(1, 7) / 6
    path = write_audio(tmp_path / "six.wav", s[:, None] * gains[None, :], RATE, subtype="FLOAT")
    assert probe(path).channels == 6
    np.testing.assert_allclose(load_audio(path, RATE), s * gains.mean(), atol=1e-6)


@pytest.mark.parametrize("codec", ["pcm_s16le", "pcm_s32le", "flac", "ac3", "aac"])
def test_container_stereo_is_averaged_at_full_scale(tmp_path, codec):
    # Left only: the mono mix is half the left channel, whatever sample format the decoder
    # outputs (integer formats must be scaled to [-1, 1], packed ones de-interleaved).
    s = sine(1.0, 48000, 440.0, 0.5)
    path = write_container(tmp_path / f"left.{codec}.mkv", [(codec, np.stack([s, 0 * s]), 48000)])
    x = load_audio(path, RATE)
    middle = x[2000:-2000]
    assert rms(middle) == pytest.approx(rms(s) / 2, rel=0.02)
    assert dominant_hz(middle) == pytest.approx(440, abs=3)
    path = write_container(tmp_path / f"anti.{codec}.mkv", [(codec, np.stack([s, -s]), 48000)])
    assert rms(load_audio(path, RATE)) < 0.01 * rms(s)


# 5.1 AC-3 with one tone per channel (write_container's 5.1: FL FR FC LFE BL BR)
TONES_HZ = (300.0, 500.0, 1000.0, 60.0, 1500.0, 2500.0)


def tone_levels(x: np.ndarray) -> dict[float, float]:
    """Spectrum magnitude of x at each of TONES_HZ, relative to the largest."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    levels = {f: float(spec[np.abs(freqs - f) < 5].max()) for f in TONES_HZ}
    top = max(levels.values())
    return {f: v / top for f, v in levels.items()}


@pytest.fixture(scope="module")
def five_one(tmp_path_factory):
    six = np.stack([sine(2.0, 48000, f, 0.2) for f in TONES_HZ])
    return write_container(tmp_path_factory.mktemp("51") / "tones.51.mkv", [("ac3", six, 48000)])


def test_five_one_centre_picks_the_centre(five_one):
    x = load_audio(five_one, RATE, channels="centre")[2000:-2000]
    levels = tone_levels(x)
    assert levels[1000.0] == 1.0 and all(v < 0.01 for f, v in levels.items() if f != 1000.0), levels
    np.testing.assert_array_equal(load_audio(five_one, RATE), load_audio(five_one, RATE, channels="centre"))  # auto


def test_seven_one_centre_picks_the_centre(tmp_path):
    codec = "flac"  # packed samples (PyAV cannot write 8 planes; a PCM track in Matroska has no layout)
    freqs = (300.0, 500.0, 1000.0, 60.0, 1500.0, 2500.0, 700.0, 3500.0)
    path = write_container(tmp_path / f"71.{codec}.mkv", [(codec, np.stack([sine(1.0, 48000, f, 0.1) for f in freqs]),
                                                           48000)])
    x = load_audio(path, RATE, channels="centre")[2000:-2000]
    assert dominant_hz(x) == pytest.approx(1000, abs=3)
    assert rms(x) == pytest.approx(0.1 / np.sqrt(2), rel=0.05)  # the centre alone, at its own level


def test_five_one_centre_weighted(five_one):
    levels = tone_levels(load_audio(five_one, RATE, channels="centre-weighted")[2000:-2000])
    # (FC + 0.5 FL + 0.5 FR) / 2: the fronts at half the centre, the surrounds and LFE left out
    assert levels[1000.0] == 1.0
    assert levels[300.0] == pytest.approx(0.5, abs=0.05) and levels[500.0] == pytest.approx(0.5, abs=0.05)
    assert max(levels[60.0], levels[1500.0], levels[2500.0]) < 0.01, levels


def test_five_one_average_is_the_decoders_downmix_of_every_channel(five_one):
    x = load_audio(five_one, RATE, channels="average")
    levels = tone_levels(x[2000:-2000])
    assert all(levels[f] > 0.2 for f in (300.0, 500.0, 1000.0, 1500.0, 2500.0)), levels
    assert levels[60.0] < 0.01  # the AC-3 decoder's own downmix leaves out the LFE: it did the mixing


def test_decoder_downmix_is_nearly_the_channel_mean(tmp_path):
    # The same voice in every channel at different levels, and a little noise of its own in each.
    import av

    voice = speech_like(3.0, 48000)
    rng = np.random.default_rng(0)
    six = np.stack([g * voice + 0.01 * rng.standard_normal(len(voice)) for g in (0.8, 0.7, 1.0, 0.3, 0.5, 0.4)])
    path = write_container(tmp_path / "voice.51.mkv", [("ac3", six.astype(np.float32), 48000)])
    downmixed = load_audio(path, RATE, channels="average")
    with av.open(str(path)) as c:  # today's path: all six channels decoded and averaged
        full = np.concatenate([f.to_ndarray() for f in c.decode(c.streams.audio[0])], axis=1).mean(axis=0)
    resampled = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    frame = av.AudioFrame.from_ndarray(full[None, :].astype(np.float32), format="flt", layout="mono")
    frame.sample_rate = 48000
    mean = np.concatenate([f.to_ndarray()[0] for f in [*resampled.resample(frame), *resampled.resample(None)]])
    n = min(len(mean), len(downmixed))
    assert abs(n - len(downmixed)) <= 1
    assert np.corrcoef(mean[:n], downmixed[:n])[0, 1] > 0.99  # the same signal up to a gain


@pytest.mark.parametrize("n_channels", [1, 2])
def test_mono_and_stereo_are_the_same_for_every_choice(tmp_path, n_channels):
    s = speech_like(2.0, 48000)
    samples = np.stack([s, 0.3 * s[::-1]][:n_channels])
    path = write_container(tmp_path / f"{n_channels}.mkv", [("ac3", samples, 48000)])
    today = load_audio(path, RATE, channels="average")
    for choice in ("auto", "centre", "centre-weighted"):
        np.testing.assert_array_equal(load_audio(path, RATE, channels=choice), today)


def test_six_channels_without_a_layout_are_averaged(tmp_path):
    import av

    x = (np.random.default_rng(0).standard_normal((6, 4800)) * 3000).astype(np.int16)
    path = tmp_path / "unnamed.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=48000, layout="6 channels")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x.T.reshape(1, -1)), format="s16",
                                           layout="6 channels")
        frame.sample_rate, frame.pts = 48000, 0
        for packet in [*s.encode(frame), *s.encode(None)]:
            c.mux(packet)
    average = load_audio(path, RATE, channels="average")
    for choice in ("auto", "centre", "centre-weighted"):
        np.testing.assert_array_equal(load_audio(path, RATE, channels=choice), average)


def test_channel_mix():
    seven_one = ("FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR")
    assert channel_mix(seven_one, "auto").choice == "centre"
    assert channel_mix(seven_one, "centre").channels == (2,)
    m = channel_mix(seven_one, "centre-weighted")
    assert m.channels == (2, 0, 1) and m.weights == pytest.approx((0.5, 0.25, 0.25))
    assert channel_mix(("FL", "FR", "FC"), "auto").choice == "average"  # 3.0: fewer than 5 channels
    assert channel_mix(("FL", "FR", "FC"), "centre").channels == (2,)  # asked for: the centre
    assert channel_mix(("FC",), "centre").choice == "average"  # FFmpeg's mono layout
    assert channel_mix(("FL", "FR", "LFE", "BL", "BR"), "centre").choice == "average"  # no centre
    assert channel_mix(("FL", "FR"), "coherent").choice == "coherent"
    assert channel_mix(("FL", "FR"), "auto").choice == "average"  # stereo is averaged unless asked
    assert channel_mix(seven_one, "coherent").choice == "centre"  # other layouts: as auto
    assert channel_mix(("FC",), "coherent").choice == "average"
    with pytest.raises(SpeakertagError, match="unknown channel choice"):
        channel_mix(seven_one, "left")


def test_decoded_channels(five_one, tmp_path):
    """What the decoder gives: all six for the centre, one when the AC-3 decoder mixes down."""
    info = probe(five_one)
    assert len(info.layout) == 6 and "FC" in info.layout
    assert decoded_channels(info) == decoded_channels(info, channels="centre") == 6
    assert decoded_channels(info, channels="average") == 1
    stereo = probe(write_audio(tmp_path / "st.wav", np.stack([sine(0.5, RATE)] * 2).T, RATE))
    assert decoded_channels(stereo) == 2
    assert decoding_cost(info) == "decoder" and decoding_cost(info, channels="average") == "light"
    assert decoding_cost(stereo) == "light" and decoding_cost(stereo, channels="coherent") == "mask"


def test_decoding_cost_is_planned_from_the_probe_alone():
    """No audio needed: the codec, the channels and their names decide."""
    five_one = AudioInfo("film.mkv", 7200.0, 48000, 6, "ac3", 0, ("FL", "FR", "FC", "LFE", "SL", "SR"))
    assert decoding_cost(five_one) == "decoder"  # all six decoded for the centre
    assert decoding_cost(five_one, "average") == "light"  # the AC-3 decoder mixes down to mono
    assert decoding_cost(replace(five_one, codec="aac"), "average") == "decoder"  # no decoder downmix for AAC
    dts = replace(five_one, codec="dca")
    assert decoded_channels(dts, "average") == 2 and decoding_cost(dts, "average") == "light"
    stereo = AudioInfo("film.wav", 60.0, 44100, 2, "WAV", None)
    assert decoding_cost(stereo) == "light" and decoding_cost(stereo, "coherent") == "mask"


def test_coherent_stereo(tmp_path):
    """A stereo file heard `coherent`: the same length as averaged; a dual-mono one unchanged;
    a tone over different noises left and right comes out with less of the noise."""
    rng = np.random.default_rng(0)
    tone = sine(3.0, 44100, 440.0, 0.3)
    noise = 0.3 * rng.standard_normal((2, len(tone)))
    wide = write_audio(tmp_path / "wide.wav", (tone + noise).T, 44100)
    dual = write_audio(tmp_path / "dual.flac", np.stack([tone + noise[0]] * 2).T, 44100)
    wide_mkv = write_container(tmp_path / "wide.mkv", [("pcm_s16le", tone + noise, 44100)])
    t = sine(3.0, RATE, 440.0, 0.3)

    def residue(x: np.ndarray) -> float:  # the level of what is not the tone
        x = x[:len(t)]
        return rms(x - np.dot(x, t) / np.dot(t, t) * t)

    for path in (wide, wide_mkv):
        average, coherent = load_audio(path, RATE), load_audio(path, RATE, channels="coherent")
        assert len(coherent) == len(average) and coherent.dtype == np.float32
        assert residue(coherent) < 0.6 * residue(average)
    np.testing.assert_allclose(load_audio(dual, RATE, channels="coherent"), load_audio(dual, RATE), atol=1e-4)


def test_a_broadcast_turning_from_5_1_to_stereo(tmp_path):
    """An MPEG-TS whose AC-3 goes from 5.1 to stereo mid-stream (a TV channel's film ends):
    every second of it comes out, heard as each part should be, however the stereo is heard."""
    rate = 48000
    five = write_container(tmp_path / "a.ts", [("ac3", 0.3 * np.stack([noise(4.0, rate, seed=i) for i in range(6)]),
                                                 rate)])
    two = write_container(tmp_path / "b.ts", [("ac3", 0.3 * np.stack([noise(4.0, rate, seed=i) for i in (6, 7)]),
                                                rate)])
    both = tmp_path / "both.ts"
    both.write_bytes(five.read_bytes() + two.read_bytes())
    lengths = {c: len(load_audio(both, RATE, channels=c)) / RATE for c in ("auto", "coherent", "average")}
    for c, seconds in lengths.items():
        assert seconds == pytest.approx(8.0, abs=0.1), c


def test_unknown_channel_choice_is_refused(five_one):
    with pytest.raises(SpeakertagError, match="unknown channel choice 'left'"):
        load_audio(five_one, RATE, channels="left")


def test_nan_samples_become_finite(tmp_path):
    s = sine(0.5, RATE)
    s[100:200] = np.nan
    x = load_audio(write_audio(tmp_path / "nan.wav", s, RATE, subtype="FLOAT"), RATE)
    assert np.isfinite(x).all()


# --- resampling and blocks --------------------------------------------------------------------

@pytest.mark.parametrize("rate_hz", [8000, 22050, 44100, 96000])
def test_resampled_length_and_pitch(tmp_path, rate_hz):
    s = sine(3.3, rate_hz, 1000.0)
    x = load_audio(write_audio(tmp_path / f"r{rate_hz}.wav", s, rate_hz, subtype="FLOAT"), RATE)
    assert abs(len(x) - len(s) * RATE / rate_hz) <= 1
    assert dominant_hz(x) == pytest.approx(1000, abs=2)
    assert rms(x[1000:-1000]) == pytest.approx(rms(s), rel=0.02)
    if rate_hz == RATE:
        np.testing.assert_array_equal(x, s)


def test_container_resampled_length(tmp_path):
    s = speech_like(3.0, 48000)
    path = write_container(tmp_path / "a.mkv", [("pcm_s16le", s, 48000)])
    x = load_audio(path, RATE)
    # the writer pads the last 1024-sample frame with zeros
    assert abs(len(x) - 1024 * -(-len(s) // 1024) * RATE / 48000) <= 1


@pytest.mark.parametrize("name", ["wav", "mkv"])
def test_blocks_concatenate_to_load_audio(tmp_path, name):
    s = speech_like(5.0, 44100)
    path = (write_audio(tmp_path / "b.wav", s, 44100) if name == "wav"
            else write_container(tmp_path / "b.mkv", [("pcm_s16le", s, 44100)]))
    whole = load_audio(path, RATE)
    for block_s in (0.37, 1.0, 2.9):
        blocks = list(decode_blocks(path, RATE, block_s=block_s))
        assert len(blocks) > 1
        assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
        joined = np.concatenate(blocks)
        assert len(joined) == len(whole)
        np.testing.assert_allclose(joined, whole, atol=1e-6)


# --- times: the film's timeline (issue 34) -----------------------------------------------------

def lag_s(x: np.ndarray, piece: np.ndarray, rate_hz: int) -> float:
    """Where `piece` begins in `x`, seconds (the peak of their cross-correlation)."""
    n = len(x) + len(piece)
    c = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(piece, n)), n)
    return int(np.argmax(c[:len(x)])) / rate_hz


def clip(example) -> tuple[np.ndarray, int]:
    """The example's first positive clip: (samples (n,) float32, 16000)."""
    x, rate_hz = sf.read(str(example / FLAC), dtype="float32")
    return x, rate_hz


def decoded(path, rate_hz: int, **kwargs) -> tuple[np.ndarray, list]:
    gaps = []
    blocks = list(decode_blocks(path, rate_hz, gaps=gaps, **kwargs))
    return np.concatenate(blocks), gaps


@pytest.mark.parametrize("start_s", [30.0, 7.3])
def test_mp4_audio_starting_late_sits_at_its_film_time(example, tmp_path, start_s):
    """An MP4 whose AAC starts after its video (ffmpeg -itsoffset): silence first, then the audio
    at its film time (the encoder's priming is placed as the file says: no shift)."""
    speech, rate = clip(example)
    film = write_timed(tmp_path / "late.mp4", [(start_s, speech)], rate, "aac", video_s=start_s + 5)
    x, gaps = decoded(film, rate)
    assert lag_s(x, speech[:2 * rate], rate) == pytest.approx(start_s, abs=0.005)
    assert len(gaps) == 1 and gaps[0][0] == 0.0 and gaps[0][1] == pytest.approx(start_s, abs=0.1)
    assert not x[:round(gaps[0][1] * rate)].any()  # digital silence
    assert len(x) / rate == pytest.approx(start_s + len(speech) / rate, abs=0.1)


def test_mpeg_ts_gap_in_its_timestamps_is_filled(example, tmp_path):
    """A broadcast recording that lost 10 s of signal: the audio after the gap stays at its film time."""
    speech, rate = clip(example)
    k = 1152 * 28  # a whole number of MP2 frames: the second piece starts exactly 10 s after the first ends
    film = write_timed(tmp_path / "gap.ts", [(0.0, speech[:k]), (k / rate + 10.0, speech[k:])], rate, "mp2")
    x, gaps = decoded(film, RATE)
    x16 = load_audio(film, rate)
    first, second = lag_s(x16, speech[:rate], rate), lag_s(x16, speech[k:k + rate], rate)
    assert first < 0.1  # the encoder's delay
    assert second - first == pytest.approx(k / rate + 10.0, abs=0.005)
    assert len(gaps) == 1 and gaps[0][1] - gaps[0][0] == pytest.approx(10.0, abs=0.01)
    assert gaps[0][0] == pytest.approx(first + k / rate, abs=0.1)
    assert len(x) / RATE == pytest.approx(len(x16) / rate, abs=0.01)  # the same timeline at the model rate


def quantised(x: np.ndarray) -> np.ndarray:
    """x as 16-bit FLAC gives it back."""
    return (np.round(np.clip(x, -1, 1) * 32767) / 32768).astype(np.float32)


def two_pieces(example) -> tuple[np.ndarray, np.ndarray, int]:
    """The clip's first 2.88 s and the 1.8 s after: whole FLAC frames at 16 kHz, exact in milliseconds."""
    speech, rate = clip(example)
    return speech[:1152 * 40], speech[1152 * 40:1152 * 65], rate


@pytest.mark.parametrize("jump_s, filled_s", [
    (0.05, 0.0),  # jitter, not a gap
    (10.0, 10.0),  # a gap
    (MAX_GAP_S + 1, 0.0),  # a jump of more than an hour: a damaged timestamp
])
def test_a_jump_in_the_timestamps_is_filled_only_when_it_is_a_gap(example, tmp_path, jump_s, filled_s):
    a, b, rate = two_pieces(example)
    film = write_timed(tmp_path / "jump.mkv", [(0.0, a), (2.88 + jump_s, b)], rate, "flac")
    x, gaps = decoded(film, rate)
    np.testing.assert_array_equal(x, quantised(np.concatenate([a, np.zeros(round(filled_s * rate)), b])))
    assert gaps == ([(2.88, round(2.88 + filled_s, 3))] if filled_s else [])


def test_timestamps_going_back_keep_the_samples_contiguous(example, tmp_path):
    """Two MPEG-TS recordings joined, the second's timestamps 0.6 s before the first's end
    (a muxer refuses to write that in one file): no gap, no overlap."""
    a, b, rate = two_pieces(example)
    first = write_timed(tmp_path / "a.ts", [(0.0, a)], rate, "mp2")
    second = write_timed(tmp_path / "b.ts", [(2.88 - 0.6, b)], rate, "mp2")
    both = tmp_path / "both.ts"
    both.write_bytes(first.read_bytes() + second.read_bytes())
    x, gaps = decoded(both, rate)
    assert gaps == []
    assert lag_s(x, b[:rate], rate) - lag_s(x, a[:rate], rate) == pytest.approx(2.88, abs=0.1)


def test_a_late_start_in_matroska_is_exact_and_the_rest_follows(example, tmp_path):
    a, b, rate = two_pieces(example)
    film = write_timed(tmp_path / "late.mkv", [(2.5, a), (2.5 + 2.88 + 0.5, b)], rate, "flac", video_s=10)
    x, gaps = decoded(film, rate)
    zeros = np.zeros(round(2.5 * rate)), np.zeros(round(0.5 * rate))
    np.testing.assert_array_equal(x, quantised(np.concatenate([zeros[0], a, zeros[1], b])))
    assert gaps == [(0.0, 2.5), (5.38, 5.88)]


def test_a_clip_can_be_had_without_its_gaps(example, tmp_path):
    """Training clips keep no timeline: the silence filled in is cut out again."""
    a, b, rate = two_pieces(example)
    film = write_timed(tmp_path / "late.mkv", [(2.5, a), (2.5 + 2.88 + 0.5, b)], rate, "flac", video_s=10)
    gaps = []
    x = load_audio(film, rate, gaps=gaps)
    np.testing.assert_array_equal(without_gaps(x, gaps, rate), quantised(np.concatenate([a, b])))
    assert without_gaps(x, [], rate) is x


def test_filled_silence_comes_in_blocks_and_is_bounded(example, tmp_path):
    """Three gaps of 50 minutes: the first is filled, in blocks of at most block_s; the next two
    would make the silence filled in more than an hour beyond the audio: damaged timestamps."""
    speech, rate = clip(example)
    a = speech[:1152 * 10]
    pieces = [(i * 3000.0, a) for i in range(4)]
    film = write_timed(tmp_path / "jumps.mkv", pieces, rate, "flac")
    gaps = []
    lengths = [len(b) for b in decode_blocks(film, rate, block_s=20.0, gaps=gaps)]
    assert max(lengths) <= 20 * rate
    assert gaps == [(0.72, 3000.0)]
    assert sum(lengths) == round((3000.0 + 3 * 0.72) * rate)


# --- streams ----------------------------------------------------------------------------------

@pytest.fixture
def two_streams(tmp_path):
    """An .mkv with audio stream 0 = 440 Hz (AAC) and stream 1 = 1000 Hz (Opus), plus video."""
    a, b = sine(2.0, 48000, 440.0), sine(2.0, 48000, 1000.0)
    return write_container(tmp_path / "two.mkv", [("aac", a, 48000), ("libopus", b, 48000)], video=True)


def test_second_stream_is_picked(two_streams):
    assert dominant_hz(load_audio(two_streams, RATE)) == pytest.approx(440, abs=3)
    assert dominant_hz(load_audio(two_streams, RATE, stream=0)) == pytest.approx(440, abs=3)
    assert dominant_hz(load_audio(two_streams, RATE, stream=1)) == pytest.approx(1000, abs=3)
    assert probe(two_streams, 1).codec == "opus"
    assert probe(two_streams, 1).stream_index == 1


def test_missing_stream_names_the_count(two_streams, tmp_path):
    for call in (lambda: probe(two_streams, 5), lambda: load_audio(two_streams, RATE, stream=5)):
        with pytest.raises(SpeakertagError, match=r"--stream 5 does not exist.*2 audio stream"):
            call()
    wav = write_audio(tmp_path / "one.wav", sine(0.5, RATE), RATE)
    with pytest.raises(SpeakertagError, match="1 audio stream"):
        load_audio(wav, RATE, stream=1)


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_video_without_audio(tmp_path, suffix):
    path = write_container(tmp_path / f"video{suffix}", [], video=True)
    for call in (lambda: probe(path), lambda: load_audio(path, RATE)):
        with pytest.raises(SpeakertagError, match="no audio stream"):
            call()


# --- bad files: always SpeakertagError, never another exception -------------------------------

def bad_files(tmp_path, example):
    rng = np.random.default_rng(0)
    files = {
        "empty.wav": b"",
        "random.wav": rng.bytes(4000),
        "random.mkv": rng.bytes(4000),
        "random.mp4": rng.bytes(4000),
        "text.mkv": b"this is not a film\n" * 50,
    }
    flac = (example / FLAC).read_bytes()
    for frac in (0.001, 0.05, 0.5, 0.95):
        files[f"cut{frac}.flac"] = flac[:int(len(flac) * frac)]
    movie = (example / "movie01.mp4").read_bytes()
    for cut in (100, 40_000, 1_000_000, len(movie) - 500):
        files[f"cut{cut}.mp4"] = movie[:cut]
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    return paths


def test_bad_files_raise_speakertag_error(tmp_path, example):
    for path in bad_files(tmp_path, example):
        with pytest.raises(SpeakertagError):
            load_audio(path, RATE)
        try:  # probe may accept a file with a sound header and cut data; it must not crash
            probe(path)
        except SpeakertagError:
            pass


def decodes_or_refuses(path, max_s: float) -> bool:
    """True when load_audio returned sane audio, False when it raised SpeakertagError."""
    try:
        x = load_audio(path, RATE)
    except SpeakertagError:
        return False
    assert len(x) <= max_s * RATE and np.isfinite(x).all()
    return True


def test_truncated_mkv_decodes_what_is_there_or_refuses(tmp_path):
    data = write_container(tmp_path / "s.mkv", [("aac", speech_like(3.0, 48000), 48000)], video=True).read_bytes()
    outcomes = []
    for frac in (0.02, 0.3, 0.6, 0.9):
        path = tmp_path / f"cut{frac}.mkv"
        path.write_bytes(data[:int(len(data) * frac)])
        outcomes.append(decodes_or_refuses(path, 3.1))
    assert outcomes[-1]  # Matroska keeps its index up front: most of a cut file still plays


def test_mp4_cut_inside_its_index(tmp_path):
    # The mp4 index (moov) sits at the end; cuts inside it leave no audio stream, a stream
    # without a decoder (once an AttributeError), or a complete audio track.
    data = write_container(tmp_path / "s.mp4", [("aac", speech_like(2.0, 48000), 48000)], video=True).read_bytes()
    moov = data.find(b"moov")
    assert moov > 0
    path = tmp_path / "cut.mp4"
    for cut in range(moov, len(data), 8):
        path.write_bytes(data[:cut])
        decodes_or_refuses(path, 2.1)


def test_folder_or_missing_path_as_file(tmp_path):
    with pytest.raises(SpeakertagError, match="folder"):
        probe(tmp_path)
    with pytest.raises(SpeakertagError, match="folder"):
        load_audio(tmp_path, RATE)
    with pytest.raises(SpeakertagError, match="no such file"):
        load_audio(tmp_path / "missing.wav", RATE)


# --- finding files ----------------------------------------------------------------------------

def test_find_media_files(tmp_path):
    (tmp_path / "notes.txt").write_text("no audio here")
    with pytest.raises(SpeakertagError, match="no audio or video files"):
        find_media_files([tmp_path])
    write_audio(tmp_path / "b" / "two.WAV", sine(0.1, RATE), RATE)
    write_audio(tmp_path / "a.flac", sine(0.1, RATE), RATE)
    extra = tmp_path / "named.bin"
    extra.write_bytes(b"x")
    found = find_media_files([tmp_path, extra])
    assert found == [tmp_path / "a.flac", tmp_path / "b" / "two.WAV", extra]
    with pytest.raises(SpeakertagError, match="no such file or folder"):
        find_media_files([tmp_path / "nope"])


# --- spans: a seek, then the samples a decoding from the start gives --------------------------

def best_shift(x: np.ndarray, full: np.ndarray, first: int, max_shift: int) -> tuple[int, float]:
    """(shift, max abs difference) of the stretch of `full` from first+shift that x matches best."""
    errors = {k: float(np.abs(x - full[first + k:first + k + len(x)]).max())
              for k in range(-max_shift, max_shift + 1) if first + k >= 0 and first + k + len(x) <= len(full)}
    k = min(errors, key=errors.get)
    return k, errors[k]


def test_span_of_the_example_film(example):
    """AAC's noise substitution draws from a random state that a seek restarts: the samples
    differ a little, at the right place."""
    film = example / "movie01.mp4"
    full = load_audio(film, RATE)
    for start_s, end_s in ((50.961, 69.091), (0.3, 2.0), (292.729, 303.474)):
        x = load_span(film, start_s, end_s, RATE)
        first = round(start_s * RATE)
        assert len(x) == round(end_s * RATE) - first
        shift, error = best_shift(x, full, first, 5)
        assert shift == 0 and error < 0.05
        assert rms(x - full[first:first + len(x)]) < 0.05 * rms(x)  # a sample off: about rms(x)


@pytest.mark.parametrize("name, codec, max_shift", [
    ("film.mp4", "aac", 0),
    ("film.mkv", "flac", 0),
    ("film.ts", "mp2", 0),
    # Matroska's timestamps are whole milliseconds: a frame that does not start on one (AAC's are
    # 21.3 ms long) is placed to within 0.5 ms; Opus's decoder moves the first frame after a seek
    # by its pre-skip (6.5 ms), rounded again: within 1 ms
    ("aac.mkv", "aac", round(0.0005 * RATE) + 1),
    ("opus.mka", "libopus", round(0.001 * RATE) + 1),
])
def test_span_seeks_to_the_samples_of_a_full_decode(tmp_path, name, codec, max_shift):
    x = speech_like(40.0, 48000, seed=3)
    film = write_container(tmp_path / name, [(codec, np.stack([x, 0.5 * x]), 48000)], video=name != "opus.mka")
    full = load_audio(film, RATE)
    for start_s, end_s in ((12.3, 20.7), (31.0, 35.5), (0.5, 3.0)):
        y = load_span(film, start_s, end_s, RATE)
        first = round(start_s * RATE)
        assert len(y) == round(end_s * RATE) - first
        shift, error = best_shift(y, full, first, max_shift + 2)
        assert abs(shift) <= max_shift and error < (1e-4 if max_shift == 0 else 0.1), (start_s, shift, error)


def test_span_of_a_plain_audio_file(tmp_path):
    wav = write_audio(tmp_path / "a.wav", speech_like(20.0, 16000, seed=2), 16000)
    full = load_audio(wav, RATE)
    y = load_span(wav, 7.25, 12.5, RATE)
    assert np.array_equal(y, full[round(7.25 * RATE):round(12.5 * RATE)])


def test_span_past_the_end_is_shorter_and_gaps_are_named(tmp_path):
    x = speech_like(30.0, 48000, seed=4)
    film = write_timed(tmp_path / "gap.mkv", [(0.0, x[:10 * 48000]), (15.0, x[10 * 48000:])], 48000, "flac")
    full, gaps = load_audio(film, RATE), []
    y = load_span(film, 8.0, 20.0, RATE, gaps=gaps)
    assert np.array_equal(y, full[8 * RATE:20 * RATE])
    assert len(gaps) == 1 and gaps[0][0] == pytest.approx(10.08, abs=0.03) and gaps[0][1] == 15.0
    assert np.all(y[round(2.2 * RATE):round(6.9 * RATE)] == 0)
    tail = load_span(film, 30.0, 60.0, RATE)
    assert len(tail) == len(full) - 30 * RATE
