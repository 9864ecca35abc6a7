"""Dialogue from a stereo mix: the part of the mid signal that both channels share.

A voice in a stereo film is a point source: panned anywhere between the speakers, its left
and right copies differ only in level, so in each time-frequency cell where it dominates the
two channels are coherent. Music beds, ambience, crowds and reverberation are mixed wide: their
left and right signals are largely decorrelated. `CoherentMid` weights each STFT cell of the
mid signal (L + R) / 2 by the magnitude of the inter-channel coherence, estimated over the
cell's last K frames and its two neighbouring frequency bins:

    gain(t, f) = |<L R*>| / sqrt(<|L|^2> <|R|^2>),   <.>: the mean over those 3K cells

which is about 1 where a voice (or any panned point source) dominates and falls towards the
estimator's floor (about 1 / sqrt(3K)) in cells of a decorrelated bed; for one
source over a decorrelated bed of equal level in both channels it is close to the Wiener
gain S / (S + N). Identical channels (a dual-mono film) pass unchanged. A source in one
channel only (hard-panned: a stereo podcast's hosts left and right) is not coherent and is
weakened like a bed (a reader's voice alone on the left came out about 8 dB down): such
recordings should be averaged, as `auto` does. (Sharper masks,
the coherence squared or with the estimator's floor subtracted, lost more of reverberant
voices than they removed of beds: docs/experiments.md.)

Processing streams block by block with a 50 % overlap-add of sqrt-Hann frames (which sum
to one), so the output has exactly as many samples as the input, aligned with it, and
nothing is held beyond one frame of each channel and the averages. Pure numpy and scipy.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.fft import irfft, rfft

from .params import StereoParams


CHUNK_FRAMES = 64  # STFT frames processed at a time


class CoherentMid:
    """Streaming stereo -> mono: feed (2, n) float32 blocks, then None to flush.

    Each call returns the mono float32 samples completed so far, shape (m,); over the whole
    stream their concatenation has the input's length, sample for sample aligned with it.
    One instance per stream and sample rate (its averages describe that stream).
    """

    def __init__(self, sample_rate_hz: int, p: StereoParams):
        n_fft = max(64, int(2 ** round(np.log2(p.frame_s * sample_rate_hz))))  # a power of two
        self.n_fft, self.hop = n_fft, n_fft // 2
        self.k = max(1, round(p.average_s * sample_rate_hz / self.hop))  # frames averaged
        self.window = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
        self.pending = np.zeros((2, self.hop), np.float32)  # inputs not yet framed, led by hop zeros
        self.tail = np.zeros(self.hop, np.float32)  # the last frame's second half, to be overlapped
        self.recent = np.zeros((4, self.k - 1, n_fft // 2 + 1), np.float32)  # the last K - 1 frames' statistics
        self.to_drop = self.hop  # the leading zeros' output
        self.n_in = self.n_out = 0

    def __call__(self, block: np.ndarray | None) -> np.ndarray:
        if block is None:  # flush: frames enough to complete every input sample
            return self._step(np.zeros((2, self.n_fft), np.float32), last=True)
        block = np.asarray(block, np.float32)
        if block.ndim != 2 or block.shape[0] != 2:
            raise ValueError(f"CoherentMid takes (2, n) blocks, not {block.shape}")
        self.n_in += block.shape[1]
        step = CHUNK_FRAMES * self.hop  # pieces whose arrays stay in the caches: about 1.7x faster than whole blocks
        return np.concatenate([self._step(block[:, i:i + step]) for i in range(0, block.shape[1], step)]
                              or [np.zeros(0, np.float32)])

    def _step(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.concatenate([self.pending, block], axis=1)
        n_frames = (x.shape[1] - self.n_fft) // self.hop + 1
        if n_frames <= 0:
            self.pending = x
            return np.zeros(0, np.float32)
        frames = sliding_window_view(x, self.n_fft, axis=1)[:, :n_frames * self.hop:self.hop] * self.window
        left, right = rfft(frames, axis=-1)  # (frames, bins) complex64 each
        lr, li, rr, ri = left.real, left.imag, right.real, right.imag
        stats = np.empty((4, self.k - 1 + n_frames, left.shape[1]), np.float32)  # |<L R*>|'s two parts, |L|^2, |R|^2
        stats[:, :self.k - 1] = self.recent
        new = stats[:, self.k - 1:]
        np.multiply(lr, rr, out=new[0])
        new[0] += li * ri
        np.multiply(li, rr, out=new[1])
        new[1] -= lr * ri
        np.multiply(lr, lr, out=new[2])
        new[2] += li * li
        np.multiply(rr, rr, out=new[3])
        new[3] += ri * ri
        self.recent = stats[:, n_frames:].copy()
        total = new.copy()  # the sum over each frame's last K frames ...
        for j in range(self.k - 1):
            total += stats[:, j:j + n_frames]
        total[:, :, 1:-1] += total[:, :, :-2] + total[:, :, 2:]  # ... and its neighbouring bins
        # |<L R*>| / sqrt(<|L|^2> <|R|^2>), without squaring sums that can reach 1e19 (samples of +-1e6)
        gain = np.hypot(total[0], total[1]) / (np.sqrt(total[2]) * np.sqrt(total[3]) + 1e-30)
        np.minimum(gain, 1.0, out=gain)
        mid = irfft((left + right) * (0.5 * gain), n=self.n_fft, axis=-1) * self.window  # (frames, n_fft)
        out = mid[:, :self.hop].copy()  # overlap-add at 50 %: frame t's first half meets t-1's second
        out[0] += self.tail
        out[1:] += mid[:-1, self.hop:]
        self.tail = mid[-1, self.hop:].copy()
        self.pending = x[:, n_frames * self.hop:]
        out = out.ravel()[self.to_drop:]
        self.to_drop = max(0, self.to_drop - n_frames * self.hop)
        if last:  # the flush's zeros produced samples beyond the input's end
            out = out[:max(0, self.n_in - self.n_out)]
        self.n_out += len(out)
        return out
