"""CoherentMid: the coherent part of a stereo mix, streamed."""

import numpy as np
import pytest

from speakertag.audio import load_audio
from speakertag.params import StereoParams
from speakertag.stereo import CoherentMid

RATE = 22050


def run(left: np.ndarray, right: np.ndarray, block_sizes=(RATE * 20,), p: StereoParams = StereoParams()) -> np.ndarray:
    """Feed the pair in blocks of the sizes given (the last repeated), then flush."""
    m, out, i, sizes = CoherentMid(RATE, p), [], 0, list(block_sizes)
    while i < len(left):
        n = sizes.pop(0) if len(sizes) > 1 else sizes[0]
        out.append(m(np.stack([left[i:i + n], right[i:i + n]])))
        i += n
    out.append(m(None))
    return np.concatenate(out)


def snr_db(x: np.ndarray, clean: np.ndarray) -> float:
    """clean's level against what x has besides it, dB (x fitted to clean by least squares)."""
    gain = np.dot(x, clean) / np.dot(clean, clean)
    return float(10 * np.log10(np.sum((gain * clean) ** 2) / np.sum((x - gain * clean) ** 2)))


@pytest.mark.parametrize("blocks", [(RATE * 20,), (1000, 37, 5000, 3), (1,) * 5 + (RATE,)])
def test_a_panned_source_passes_whole_aligned_and_of_the_same_length(blocks):
    x = np.random.default_rng(0).standard_normal(RATE * 3).astype(np.float32)
    y = run(x, 0.5 * x, blocks)  # panned: the same signal, quieter on the right
    assert len(y) == len(x)
    np.testing.assert_allclose(y, 0.75 * x, atol=1e-5)  # the mid, untouched, sample for sample


def test_decorrelated_channels_are_weakened():
    rng = np.random.default_rng(1)
    left, right = rng.standard_normal((2, RATE * 5)).astype(np.float32)
    assert np.std(run(left, right)) < 0.45 * np.std((left + right) / 2)  # the estimator's floor: about 0.3


def test_a_voice_over_a_wide_bed_comes_out_cleaner(example):
    """Real speech panned slightly left, two different music and noise clips left and right."""
    voice = load_audio(example / "positive" / "ls_2609__2609-156975-0001.flac", RATE)
    n = len(voice)
    bed = [load_audio(example / "negative" / name, RATE) for name in
           ("nonspeech__music_score_0.flac", "nonspeech__roomtone_pink.flac")]
    bed = [np.resize(b, n) * (0.7 * np.std(voice) / np.std(b)) for b in bed]
    left, right = 0.6 * voice + bed[0], 0.4 * voice + bed[1]
    mid = (left + right) / 2
    y = run(left, right)
    assert snr_db(y, voice) > snr_db(mid, voice) + 3


def test_an_empty_or_short_stream():
    assert len(run(np.zeros(0, np.float32), np.zeros(0, np.float32))) == 0
    x = np.ones(10, np.float32)
    np.testing.assert_allclose(run(x, x), x, atol=1e-5)


def test_blocks_must_be_stereo():
    with pytest.raises(ValueError, match=r"\(2, n\) blocks"):
        CoherentMid(RATE, StereoParams())(np.zeros((3, 100), np.float32))


def test_full_scale_and_silence_stay_finite():
    """Samples at audio.MAX_ABS_SAMPLE (1e6) and digital silence give finite output."""
    loud = np.random.default_rng(2).standard_normal((2, RATE)).astype(np.float32) * 1e6
    assert np.isfinite(run(*loud)).all()
    silent = np.zeros(RATE, np.float32)
    assert not run(silent, silent).any()
