"""scripts/pretrain.py: the formant warp of its pseudo-speakers on log-mel frames, its chain groups and its class loss."""

import sys
from pathlib import Path

import numpy as np
import scipy.fft
import torch

from speakertag.params import AudioParams

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from pretrain import FREQ_MASK_BINS, VoiceClasses, formant_warp_matrix, freq_masked  # noqa: E402


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


def test_voice_classes_start_at_the_voices_mean_and_learn_apart():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(12, 8), dim=1).requires_grad_()
    labels = torch.tensor([0, 0, 0, 2, 2, 2, 5, 5, 5, 7, 7, 7])
    classes = VoiceClasses(10, 8)
    first = classes(emb, labels)
    # a voice met for the first time starts at its windows' mean; the others stay unset
    assert torch.allclose(classes.weight[2], emb[3:6].detach().mean(0))
    assert classes.seen.tolist() == [i in (0, 2, 5, 7) for i in range(10)]
    opt = torch.optim.SGD([emb, *classes.parameters()], lr=0.05)
    for _ in range(50):
        loss = classes(emb, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < float(first)


def test_freq_masks_flatten_a_few_bands_of_some_windows():
    rng = np.random.default_rng(0)
    feats = torch.randn(200, 128, 20)
    out = freq_masked(feats, 2, rng)
    changed = (out != feats).any(dim=2)  # (window, bin): bins masked somewhere in the window
    masked_windows = changed.any(dim=1)
    assert 0.45 < masked_windows.float().mean() < 0.75  # about 60 % of the windows
    assert changed.sum(dim=1).max() <= 2 * FREQ_MASK_BINS
    i = int(np.flatnonzero(masked_windows.numpy())[0])
    band = np.flatnonzero(changed[i].numpy())
    torch.testing.assert_close(out[i, band], feats[i].mean(dim=0).expand(len(band), -1))  # each frame's mean
    assert torch.equal(out[~masked_windows], feats[~masked_windows])
