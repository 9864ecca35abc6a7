"""scripts/pretrain.py's pseudo-speakers: the formant warp on log-mel frames."""

import sys
from pathlib import Path

import numpy as np
import scipy.fft

from speakertag.params import AudioParams

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from pretrain import formant_warp_matrix  # noqa: E402


def _envelope(frames: np.ndarray, n: int = 16) -> np.ndarray:
    dct = scipy.fft.dct(np.eye(len(frames)), norm="ortho", axis=0)[:n]
    return dct.T @ dct @ frames


def test_formant_warp_moves_the_envelope_and_keeps_the_harmonics():
    p = AudioParams()
    bins = np.arange(p.n_mels)
    envelope = 3.0 * np.exp(-0.5 * ((bins - 60) / 6.0) ** 2)  # a formant at mel bin 60 (about 2 kHz)
    ripple = 0.5 * np.sin(2 * np.pi * bins / 5.0)  # harmonics
    frames = (envelope + ripple)[:, None]
    np.testing.assert_allclose(formant_warp_matrix(p, 1.0), np.eye(p.n_mels), atol=1e-6)
    peaks = {}
    for alpha in (0.88, 1.12):
        warped = formant_warp_matrix(p, alpha) @ frames
        peaks[alpha] = int(np.argmax(_envelope(warped)[20:100, 0])) + 20
        fine, fine_before = (warped - _envelope(warped))[:, 0], (frames - _envelope(frames))[:, 0]
        assert np.corrcoef(fine, fine_before)[0, 1] > 0.99
    assert peaks[0.88] < 60 - 2 and peaks[1.12] > 60 + 2
