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


def test_a_chain_group_shares_each_slots_recording_chain():
    """--chain-group: two voices of one group, here the same clean clip under two names, come
    out alike window slot by window slot (one chain each slot, other slots other chains); with
    chains of their own they differ."""
    import torch

    from pretrain import Batches
    from speakertag.params import Params

    p = Params()
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(p.audio.window_samples)).astype(np.float32)
    corpus = {"a": [clip], "b": [clip]}
    threads = torch.get_num_threads()  # a batch sets one thread, as in its data-loading worker
    for group, alike in ((10, True), (1, False)):
        try:
            feats, labels, taught = next(iter(Batches(corpus, ["a", "b"], p, n_voices=10, per_voice=3, seed=1,
                                                      chain_group=group)))
        finally:
            torch.set_num_threads(threads)
        assert feats.shape == (30, p.audio.n_mels, p.audio.window_frames) and (taught == -1).all()
        a, b = (feats[labels == v] for v in (0, 5))  # voice 0: "a" at its own speed, voice 5: "b" likewise
        assert torch.equal(a, b) == alike
        assert not torch.equal(a[0], a[1])  # another slot, another chain
