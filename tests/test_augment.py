import av
import numpy as np
import pytest

from conftest import noise, sine, speech_like
from speakertag import augment
from speakertag.augment import coloured_noise, low_pass, mix_at_snr, random_crop, reverberate, rms

RATE = 22050


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 7.5, 20.0])
def test_mix_at_snr(snr_db):
    s = speech_like(2.0, RATE)
    n = noise(2.0, RATE, amplitude=0.3, seed=1)
    mixed = mix_at_snr(s, n, snr_db)
    added = mixed - s
    assert 20 * np.log10(rms(s) / rms(added)) == pytest.approx(snr_db, abs=0.1)
    assert np.corrcoef(added, n)[0, 1] == pytest.approx(1.0, abs=1e-6)  # only the noise is scaled


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_coloured_noise(exponent):
    rng = np.random.default_rng(0)
    x = coloured_noise(RATE, exponent, rng)
    assert x.dtype == np.float32 and x.shape == (RATE,)
    assert rms(x) == pytest.approx(1.0, abs=1e-4)
    # the spectrum slopes as 1/f**exponent: compare power in two octaves
    p = np.abs(np.fft.rfft(x)) ** 2
    ratio_db = 10 * np.log10(p[100:200].mean() / p[1000:2000].mean())
    assert ratio_db == pytest.approx(10 * exponent, abs=2.0)  # 10 dB per decade per unit exponent


def test_reverberate_and_low_pass_keep_length_and_level():
    rng = np.random.default_rng(0)
    x = speech_like(1.0, RATE)
    y = reverberate(x, RATE, 0.5, rng)
    assert y.shape == x.shape and y.dtype == np.float32
    assert rms(y) == pytest.approx(rms(x), rel=1e-3)
    z = low_pass(sine(1.0, RATE, 1000.0) + sine(1.0, RATE, 6000.0), RATE, 3000.0)
    assert z.shape == (RATE,)
    spec = np.abs(np.fft.rfft(z))
    assert spec[6000] < 1e-3 * spec[1000]


def test_random_crop():
    rng = np.random.default_rng(0)
    clip = np.arange(100, dtype=np.float32)
    c = random_crop(clip, 30, rng)
    assert len(c) == 30 and np.all(np.diff(c) == 1)
    assert len(random_crop(clip, 250, rng)) == 250  # shorter clips are tiled first


@pytest.mark.parametrize("seed", range(12))
def test_film_like(seed):
    rng = np.random.default_rng(seed)
    x = speech_like(2.0, RATE, seed=seed)
    pool = [noise(3.0, RATE, 0.2, seed=s) for s in range(3)] + [sine(0.7, RATE, 300.0)]
    generated = augment.generated_backgrounds(RATE, np.random.default_rng(99), seconds=1.0)
    y = augment.film_like(x, pool if seed % 3 else [], generated, RATE, rng)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
    assert rms(y) > 0


@pytest.mark.parametrize("channel", augment.CODEC_CHANNELS, ids=lambda c: c[0])
def test_codec_round_trip_keeps_length_level_and_band(channel):
    """Every codec channel gives speech back at the input's length and about its level; the
    8 kHz ones take away everything above 4 kHz."""
    try:
        av.codec.Codec(channel[0], "w")
    except av.codec.codec.UnknownCodecError:
        pytest.skip(f"this PyAV's FFmpeg has no {channel[0]} encoder")
    x = speech_like(2.0, RATE).astype(np.float32)
    y = augment.codec_round_trip(x, RATE, np.random.default_rng(0), (channel,))
    assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    assert 0.8 < rms(y) / rms(x) < 1.2
    power = np.abs(np.fft.rfft(y)) ** 2
    above_4500_hz = power[int(len(power) * 4500 / (RATE / 2)):].sum() / power.sum()
    if channel[1] == 8000:
        assert above_4500_hz < 1e-4
