"""Make clean clips sound like film audio: noise, music and voices at 0-20 dB SNR, level
changes, reverberation, band limiting, codecs. Pure functions of (audio, rng) on numpy arrays.
"""

from __future__ import annotations

import av
import librosa
import numpy as np
from scipy.signal import fftconvolve

from .features import tile_to
from .params import AugmentParams


def coloured_noise(n_samples: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n_samples))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / f ** (exponent / 2), n_samples)
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


def synthetic_music(n_samples: int, sample_rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    """Notes of a random scale with harmonics and decaying envelopes, unit RMS: a stand-in
    for film scores, so that the encoder learns that pitched sound is not a voice."""
    t = np.arange(n_samples) / sample_rate_hz
    x = np.zeros(n_samples)
    for _ in range(int(rng.integers(3, 9))):
        f0 = 110.0 * 2 ** (rng.integers(0, 36) / 12)
        start = int(rng.integers(0, n_samples))
        env = np.exp(-np.maximum(t - t[start], 0.0) * rng.uniform(0.5, 4.0)) * (t >= t[start])  # no overflow before the note
        for h in range(1, int(rng.integers(2, 7))):
            if f0 * h < sample_rate_hz / 2:
                x += env * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) / h ** rng.uniform(0.7, 1.5)
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """signal + noise scaled so that 20 log10(rms(signal) / rms(noise)) = snr_db."""
    gain = rms(signal) / (rms(noise) * 10 ** (snr_db / 20))
    return signal + gain * noise


def reverberate(x: np.ndarray, sample_rate_hz: int, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room response: exponentially decaying noise (RT60 in s)."""
    n = int(rt60_s * sample_rate_hz)
    t = np.arange(n) / sample_rate_hz
    rir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60_s)
    rir[0] = 1.0 + abs(rir[0])
    rir /= np.sqrt(np.sum(rir ** 2))
    wet = fftconvolve(x, rir)[: len(x)]
    return (wet * rms(x) / rms(wet)).astype(np.float32)


def low_pass(x: np.ndarray, sample_rate_hz: int, cutoff_hz: float) -> np.ndarray:
    """Brick-wall low-pass in the frequency domain (telephone / broadcast band limits)."""
    spec = np.fft.rfft(x)
    spec[int(cutoff_hz / sample_rate_hz * len(x)):] = 0
    return np.fft.irfft(spec, len(x)).astype(np.float32)


# Channels a voice reaches a film through: telephone codecs at 8 kHz (mu-law, A-law, AMR-NB, as
# phone calls and voice prompts are recorded), wideband G.722, and the lossy codecs of web and
# broadcast audio. (FFmpeg encoder, sample rate in Hz, sample format, bit rates in b/s or None.)
CODEC_CHANNELS = (
    ("pcm_mulaw", 8000, "s16", None),
    ("pcm_alaw", 8000, "s16", None),
    ("libopencore_amrnb", 8000, "s16", (4750, 7950, 12200)),
    ("g722", 16000, "s16", None),
    ("libmp3lame", 22050, "fltp", (24000, 32000, 48000)),
    ("aac", 22050, "fltp", (24000, 32000, 48000)),
    ("libopus", 16000, "flt", (8000, 12000, 16000)),
    ("ac3", 32000, "fltp", (96000, 128000)),
)
TELEPHONE_CHANNELS = CODEC_CHANNELS[:3]  # the 8 kHz ones
_DECODER = {"libopencore_amrnb": "amrnb", "libmp3lame": "mp3", "libopus": "opus"}


def codec_round_trip(x: np.ndarray, sample_rate_hz: int, rng: np.random.Generator,
                     channels: tuple = CODEC_CHANNELS) -> np.ndarray:
    """(n,) float32 -> (n,) float32: x encoded and decoded again by one of `channels` (FFmpeg,
    through PyAV) at its sample rate and a random bit rate, and resampled back. The codec's
    start-up delay (up to about 50 ms) shifts the audio; the end is cut or padded to n."""
    codec, rate_hz, fmt, bit_rates = channels[int(rng.integers(len(channels)))]
    y = librosa.resample(x, orig_sr=sample_rate_hz, target_sr=rate_hz) if rate_hz != sample_rate_hz else x
    y = np.clip(y, -1.0, 1.0)
    data = (y * 32767).astype(np.int16) if fmt == "s16" else y.astype(np.float32)
    enc = av.CodecContext.create(codec, "w")
    enc.sample_rate, enc.layout, enc.format = rate_hz, "mono", fmt
    if bit_rates:
        enc.bit_rate = int(bit_rates[int(rng.integers(len(bit_rates)))])
    enc.open()
    step = enc.frame_size or 1024
    packets = []
    for i in range(0, len(data), step):
        chunk = data[i:i + step]
        if enc.frame_size and len(chunk) < step:
            chunk = np.pad(chunk, (0, step - len(chunk)))
        frame = av.AudioFrame.from_ndarray(chunk[None], format=fmt, layout="mono")
        frame.sample_rate, frame.pts = rate_hz, i
        packets += enc.encode(frame)
    packets += enc.encode(None)
    dec = av.CodecContext.create(_DECODER.get(codec, codec), "r")
    dec.sample_rate, dec.layout = rate_hz, "mono"
    out, out_rate = [], rate_hz
    for packet in [*packets, None]:
        for f in dec.decode(packet):
            a = f.to_ndarray()
            full_scale = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}.get(a.dtype, 1.0)
            a = a.mean(axis=0) if f.format.is_planar else a.reshape(-1, len(f.layout.channels)).mean(axis=1)
            out.append((a / full_scale).astype(np.float32))
            out_rate = f.sample_rate
    z = np.concatenate(out) if out else np.zeros(0, np.float32)
    if out_rate != sample_rate_hz:
        z = librosa.resample(z, orig_sr=out_rate, target_sr=sample_rate_hz)
    return np.pad(z[:len(x)], (0, max(0, len(x) - len(z)))).astype(np.float32)


def change_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """x played `factor` times faster, (round(len(x) / factor),) float32: pitch, formants and
    tempo scale together, so the copy sounds like another person of the same recording (a
    pseudo-speaker). Resampled with soxr, as librosa does by default."""
    if factor == 1.0:
        return x
    return librosa.resample(x, orig_sr=factor, target_sr=1.0).astype(np.float32)


def random_crop(clip: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A random n_samples stretch of `clip` (tiled first when the clip is shorter)."""
    clip = tile_to(clip, n_samples)
    start = int(rng.integers(0, len(clip) - n_samples + 1))
    return clip[start:start + n_samples]


def generated_backgrounds(sample_rate_hz: int, rng: np.random.Generator, seconds: float = 8.0) -> list[np.ndarray]:
    """A bank of generated backgrounds to crop from: white, pink and brown noise and
    synthetic music, `seconds` long each (made once: generating per window is slow)."""
    n = int(seconds * sample_rate_hz)
    noise = [coloured_noise(n, e, rng) for e in (0.0, 1.0, 1.0, 2.0, 2.0)]
    return noise + [synthetic_music(n, sample_rate_hz, rng) for _ in range(5)]


def film_like(x: np.ndarray, noise_pool: list[np.ndarray], generated: list[np.ndarray], sample_rate_hz: int,
              rng: np.random.Generator, snr_db_range: tuple[float, float] = (0.0, 20.0),
              aug: AugmentParams = AugmentParams()) -> np.ndarray:
    """One random film-like degradation of a clip crop x (1-D float32, any length).

    Background: a crop of the noise pool (the user's negative clips, music, noise, other
    voices, each scaled to unit RMS), several pool crops summed (babble), or a crop of a generated background
    (coloured noise, synthetic music); then maybe reverberation, maybe band limiting,
    always a random level. The probabilities and ranges are `aug`'s.
    """
    n = len(x)
    y = x
    if rng.random() < aug.reverb_probability:
        y = reverberate(y, sample_rate_hz, float(rng.uniform(*aug.reverb_rt60_s_range)), rng)
    kind = rng.random()
    if kind < aug.pool_background_probability and noise_pool:
        noise = random_crop(noise_pool[int(rng.integers(len(noise_pool)))], n, rng)
    elif kind < aug.pool_background_probability + aug.babble_probability and noise_pool:
        n_crops = int(rng.integers(*aug.babble_crops_range))
        noise = sum(random_crop(noise_pool[int(i)], n, rng) for i in rng.integers(len(noise_pool), size=n_crops))
    else:
        noise = random_crop(generated[int(rng.integers(len(generated)))], n, rng)
    y = mix_at_snr(y, noise, float(rng.uniform(*snr_db_range)))
    if rng.random() < aug.low_pass_probability:
        y = low_pass(y, sample_rate_hz, float(rng.uniform(*aug.low_pass_cutoff_hz_range)))
    y = y * 10 ** (rng.uniform(*aug.level_db_range) / 20) * aug.level_rms / rms(y)
    return np.clip(y, -1.0, 1.0).astype(np.float32)
