"""Log-mel frames and window slicing: the one front end of training and tagging.

Frames are computed without centre padding: frame i covers samples
[i * hop_length, i * hop_length + n_fft). That makes a long stream cut into blocks give
exactly the frames of the whole, provided each block carries the samples its last frame
still needs (`stream_windows`). Window j covers frames [j * hop_frames, j * hop_frames +
window_frames).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Iterator

import numpy as np
import torch
import torchaudio.functional

from .params import AudioParams


@lru_cache(maxsize=8)
def _mel_basis(p: AudioParams) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) Slaney-scale, Slaney-normalised mel filterbank (librosa's default)."""
    fb = torchaudio.functional.melscale_fbanks(p.n_fft // 2 + 1, p.f_min_hz, p.f_max_hz, p.n_mels,
                                               p.sample_rate_hz, norm="slaney", mel_scale="slaney")
    return fb.T.contiguous()


MEL_GROUPS = 8  # the filterbank applied as this many blocks of neighbouring mel bins


@lru_cache(maxsize=8)
def _mel_blocks(p: AudioParams) -> tuple[tuple[int, int, torch.Tensor], ...]:
    """The filterbank as MEL_GROUPS blocks of consecutive mel bins, each (first FFT bin, end
    FFT bin, its (mel bins, FFT bins) weights) over only the FFT bins its filters touch: an
    eighth of the full matrix product, the same sums."""
    fb = _mel_basis(p)
    blocks = []
    for rows in torch.arange(p.n_mels).tensor_split(MEL_GROUPS):
        touched = torch.nonzero(fb[rows].sum(0)).flatten()
        lo, hi = (int(touched[0]), int(touched[-1]) + 1) if len(touched) else (0, 0)
        blocks.append((lo, hi, fb[rows, lo:hi].contiguous()))
    return tuple(blocks)


@lru_cache(maxsize=8)
def _hann(n_fft: int) -> torch.Tensor:
    return torch.hann_window(n_fft)


# log_mel works on at most about this many frames at a time (rows of a batch, or stretches of one
# long row): the spectra then stay in the CPU's caches. The same numbers, 15-40 % faster: a film's
# 20 s block took 4.8-7.1 ms instead of 5.8-8.7 ms on one core, 32 windows of 2 s 15-21 ms
# instead of 20-36 ms (interleaved runs).
LOG_MEL_CHUNK_FRAMES = 256


def log_mel(samples: torch.Tensor, p: AudioParams) -> torch.Tensor:
    """Log-mel power of mono audio.

    samples: (..., n_samples) float at p.sample_rate_hz.
    Returns (..., n_mels, n_frames) with n_frames = 1 + (n_samples - n_fft) // hop_length
    (0 frames when shorter than n_fft).
    """
    lead, n_samples = samples.shape[:-1], samples.shape[-1]
    if n_samples < p.n_fft:
        return samples.new_zeros(*lead, p.n_mels, 0)
    flat = samples.reshape(-1, n_samples)
    n_frames = 1 + (n_samples - p.n_fft) // p.hop_length
    rows = max(1, LOG_MEL_CHUNK_FRAMES // n_frames)
    span = min(n_frames, LOG_MEL_CHUNK_FRAMES)
    out = torch.cat([torch.cat([_log_mel_frames(flat[r:r + rows, f * p.hop_length:
                                                     (min(f + span, n_frames) - 1) * p.hop_length + p.n_fft], p)
                                for f in range(0, n_frames, span)], dim=-1)
                     for r in range(0, len(flat), rows)])
    return out.reshape(*lead, p.n_mels, n_frames)


def _log_mel_frames(flat: torch.Tensor, p: AudioParams) -> torch.Tensor:
    """(batch, n_samples) -> (batch, n_mels, n_frames): log_mel in one piece."""
    spec = torch.stft(flat, p.n_fft, p.hop_length, window=_hann(p.n_fft).to(flat.device),
                      center=False, return_complex=True)
    power = spec.real.square() + spec.imag.square()  # (batch, n_fft // 2 + 1, n_frames)
    mel = torch.cat([torch.matmul(w.to(flat.device), power[:, lo:hi]) for lo, hi, w in _mel_blocks(p)], dim=1)
    return torch.log(mel + p.log_floor)


@lru_cache(maxsize=8)
def _speech_bins(p: AudioParams) -> torch.Tensor:
    """(n_mels,) bool: mel bins whose filter peaks inside p.speech_band_hz."""
    peaks_hz = _mel_basis(p).argmax(dim=1) * (p.sample_rate_hz / p.n_fft)
    low_hz, high_hz = p.speech_band_hz
    return (peaks_hz > low_hz) & (peaks_hz < high_hz)


def cell_levels_db(frames: torch.Tensor, p: AudioParams) -> torch.Tensor:
    """(n, n_mels, k * hop_frames) log-mel frames -> (n, k) level of each hop-long cell:
    10 log10 of its mean speech-band mel power. A window's cell i is the input's cell j + i
    for window j."""
    n, k = len(frames), frames.shape[-1] // p.hop_frames
    power = (frames[:, _speech_bins(p), :k * p.hop_frames].exp() - p.log_floor).clamp_min(0).sum(1)  # (n, frames)
    per_cell = power.reshape(n, k, p.hop_frames).mean(-1)
    return 10 * torch.log10(per_cell + p.log_floor)


def slice_windows(frames: torch.Tensor, p: AudioParams) -> torch.Tensor:
    """(n_mels, n_frames) -> (n_windows, n_mels, window_frames), a view without copy."""
    if frames.shape[-1] < p.window_frames:
        return frames.new_zeros(0, frames.shape[0], p.window_frames)
    return frames.unfold(-1, p.window_frames, p.hop_frames).permute(1, 0, 2)


def tile_to(samples: np.ndarray, n_samples: int) -> np.ndarray:
    """Repeat a short clip until it is `n_samples` long (short enrolment clips fill a window)."""
    if len(samples) >= n_samples:
        return samples
    return np.tile(samples, -(-n_samples // len(samples)))[:n_samples]


def stream_windows(blocks: Iterable[np.ndarray], p: AudioParams, batch_windows: int
                   ) -> Iterator[tuple[int, torch.Tensor]]:
    """Turn a stream of mono sample blocks into batches of windows.

    Yields (first_window_index, windows) with windows of shape
    (<= batch_windows, n_mels, window_frames); the concatenation of all batches equals
    slice_windows(log_mel(whole_stream)). Memory stays bounded by one block plus one batch.
    """
    carry_samples = np.zeros(0, np.float32)
    frames = torch.zeros(p.n_mels, 0)
    next_window = 0
    frame_offset = 0  # index of frames[:, 0] in the whole stream
    for block in blocks:
        samples = np.concatenate([carry_samples, block])
        n_new = 0 if len(samples) < p.n_fft else 1 + (len(samples) - p.n_fft) // p.hop_length
        new = log_mel(torch.from_numpy(samples), p)
        carry_samples = samples[n_new * p.hop_length:]
        frames = torch.cat([frames, new], dim=1)
        windows = slice_windows(frames, p)
        for i in range(0, len(windows), batch_windows):
            yield next_window + i, windows[i:i + batch_windows]
        next_window += len(windows)
        # Keep the frames that the next window still needs.
        keep_from = next_window * p.hop_frames - frame_offset
        frames = frames[:, keep_from:]
        frame_offset += keep_from
