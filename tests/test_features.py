import numpy as np
import pytest
import torch

from conftest import sine, speech_like
from speakertag.features import cell_levels_db, log_mel, slice_windows, stream_windows, tile_to
from speakertag.params import AudioParams

P = AudioParams()
RATE = P.sample_rate_hz


@pytest.mark.parametrize("n_samples", [P.n_fft, P.n_fft + 1, P.n_fft + P.hop_length, 22050, 12345])
def test_log_mel_shape(n_samples):
    x = torch.from_numpy(speech_like(n_samples / RATE + 0.1, RATE)[:n_samples])
    frames = log_mel(x, P)
    assert frames.shape == (P.n_mels, 1 + (n_samples - P.n_fft) // P.hop_length)
    assert frames.dtype == torch.float32 and torch.isfinite(frames).all()


def test_log_mel_shorter_than_fft_and_batched():
    assert log_mel(torch.zeros(P.n_fft - 1), P).shape == (P.n_mels, 0)
    batch = torch.from_numpy(np.stack([sine(1.0, RATE, f) for f in (200.0, 2000.0, 5000.0)]))
    frames = log_mel(batch, P)
    assert frames.shape == (3, P.n_mels, 1 + (RATE - P.n_fft) // P.hop_length)
    torch.testing.assert_close(frames[1], log_mel(batch[1], P))


def test_log_mel_puts_a_tone_in_the_right_band():
    peaks = [int(log_mel(torch.from_numpy(sine(1.0, RATE, f)), P).mean(-1).argmax()) for f in (200.0, 1000.0, 5000.0)]
    assert peaks[0] < peaks[1] < peaks[2]
    # silence sits at the log floor
    torch.testing.assert_close(log_mel(torch.zeros(RATE), P), torch.full((P.n_mels, 83), float(np.log(P.log_floor))))


def test_slice_windows_shape_and_content():
    n_frames = P.window_frames + 5 * P.hop_frames + 7
    frames = torch.arange(P.n_mels * n_frames, dtype=torch.float32).reshape(P.n_mels, n_frames)
    w = slice_windows(frames, P)
    assert w.shape == (6, P.n_mels, P.window_frames)
    for j in range(6):
        torch.testing.assert_close(w[j], frames[:, j * P.hop_frames: j * P.hop_frames + P.window_frames])
    assert slice_windows(frames[:, :P.window_frames - 1], P).shape == (0, P.n_mels, P.window_frames)
    assert slice_windows(frames[:, :P.window_frames], P).shape == (1, P.n_mels, P.window_frames)


def test_tile_to():
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(tile_to(x, 12), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])
    assert tile_to(x, 3) is x


def blocks_of(x: np.ndarray, sizes_s: list[float]) -> list[np.ndarray]:
    """Cut x into consecutive blocks of the given lengths (s), cycling, to the end."""
    out, i, k = [], 0, 0
    while i < len(x):
        n = max(1, int(sizes_s[k % len(sizes_s)] * RATE))
        out.append(x[i:i + n])
        i, k = i + n, k + 1
    return out


@pytest.mark.parametrize("sizes_s, batch", [
    ([7.3, 0.01, 13.0, 0.5, 2.2], 7),
    pytest.param([0.03], 5, marks=pytest.mark.slow),  # many blocks shorter than one STFT frame hop (1333 blocks)
    ([40.0], 256),  # one block
    ([1.99, 3.01], 1),
])
def test_stream_windows_equal_whole(sizes_s, batch):
    x = speech_like(40.0, RATE, seed=3)
    expected = slice_windows(log_mel(torch.from_numpy(x), P), P)
    got_first, got = [], []
    for first, windows in stream_windows(blocks_of(x, sizes_s), P, batch):
        assert 0 < len(windows) <= batch
        got_first.append(first)
        got.append(windows)
    starts = np.cumsum([0] + [len(w) for w in got[:-1]])
    assert got_first == starts.tolist()
    got = torch.cat(got)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)


def test_stream_windows_too_short():
    x = speech_like(1.0, RATE)
    assert list(stream_windows([x[:5000], x[5000:]], P, 8)) == []


def test_cell_levels_follow_speech_band_loudness():
    """A 1 kHz tone 20 dB louder in its second half: the cells say so, in dB; a 6 kHz tone
    (outside the speech band) and silence stay far below."""
    n = P.window_samples + 3 * P.hop_frames * P.hop_length
    tone = sine(n / RATE + 0.1, RATE, 1000.0)[:n]
    half = n // 2
    x = np.concatenate([0.01 * tone[:half], 0.1 * tone[half:]]).astype(np.float32)
    windows = slice_windows(log_mel(torch.from_numpy(x), P), P)
    levels = cell_levels_db(windows, P)
    assert levels.shape == (len(windows), P.window_frames // P.hop_frames)
    first, last = float(levels[0, 0]), float(levels[-1, -1])
    assert last - first == pytest.approx(20.0, abs=1.0)
    # window j's cell i is window j + 1's cell i - 1
    torch.testing.assert_close(levels[1:, :-1], levels[:-1, 1:])
    high = cell_levels_db(slice_windows(log_mel(torch.from_numpy(0.1 * sine(3.0, RATE, 6000.0)), P), P), P)
    assert float(high.max()) < last - 30.0
    quiet = cell_levels_db(slice_windows(log_mel(torch.zeros(3 * RATE), P), P), P)
    assert float(quiet.max()) < last - 30.0


def test_log_mel_blocks_apply_the_whole_filterbank():
    """The filterbank applied block by block over the FFT bins it touches: the full product."""
    from speakertag.features import _hann, _mel_basis

    p = AudioParams()
    x = torch.from_numpy(speech_like(1.0, p.sample_rate_hz))
    spec = torch.stft(x[None], p.n_fft, p.hop_length, window=_hann(p.n_fft), center=False, return_complex=True)
    full = torch.log(_mel_basis(p) @ spec.abs().square() + p.log_floor)[0]
    torch.testing.assert_close(log_mel(x, p), full, atol=1e-4, rtol=1e-5)
