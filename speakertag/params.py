"""Every number that defines speakertag's front end, encoder, training and tagging.

One frozen `Params` object is saved inside every model and memory file, so that a file
always carries the numbers that built it. Derived values (frame counts, seconds) are
computed from the stored ones, never stored twice. This module imports no torch or faiss.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

FORMAT_VERSION = 2  # version of model and memory files; bump on incompatible change


@dataclass(frozen=True)
class AudioParams:
    sample_rate_hz: int = 22050  # every input is resampled to this rate
    n_fft: int = 1024  # STFT size (46 ms at 22050 Hz)
    hop_length: int = 256  # STFT hop in samples (11.6 ms)
    n_mels: int = 128  # log-mel bins
    f_min_hz: float = 20.0
    f_max_hz: float = 11025.0
    log_floor: float = 1e-5  # added to mel power before the log
    window_frames: int = 172  # one embedding window (about 2.0 s)
    hop_frames: int = 43  # hop between windows (about 0.5 s)

    @property
    def frame_s(self) -> float:
        """Seconds between two STFT frames."""
        return self.hop_length / self.sample_rate_hz

    @property
    def window_s(self) -> float:
        return self.window_frames * self.frame_s

    @property
    def hop_s(self) -> float:
        return self.hop_frames * self.frame_s

    @property
    def window_samples(self) -> int:
        """Samples that one window's frames cover."""
        return self.n_fft + (self.window_frames - 1) * self.hop_length


@dataclass(frozen=True)
class EncoderParams:
    channels: int = 192  # conv1d channels of the first layer and of each residual block
    first_kernel: int = 5  # frames seen by the first conv1d
    dilations: tuple[int, ...] = (2, 3, 4)  # one residual block (kernel 3) per dilation
    attention_channels: int = 64  # hidden channels of the attentive pooling
    embedding_dim: int = 128


@dataclass(frozen=True)
class TrainParams:
    margin: float = 0.3  # cosine triplet margin
    batch_size: int = 32  # anchors per step
    max_steps: int = 120
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    mining_every_steps: int = 20  # re-degrade and re-embed the whole pools this often
    eval_every_steps: int = 20
    patience_evals: int = 3  # early stopping: evaluations without improvement
    val_fraction: float = 0.2  # clips held back for validation and calibration
    min_clip_s: float = 1.0  # shorter clips are skipped; shorter than a window are tiled
    snr_db_range: tuple[float, float] = (0.0, 20.0)  # augmentation mixing range
    augment_probability: float = 0.8
    augmented_memory_copies: int = 1  # noisy copies of each positive window in the memory
    calibration_rounds: int = 2  # film-like copies of each other window scored for calibration, twice as many of the target's (dev: 2 > 1, a steadier threshold)
    impostor_speed_factors: tuple[float, ...] = (0.9, 1.1)  # speed copies of each impostor, as more unseen voices
    calibration_impostors: int = 16  # impostor voices most like the target that join the calibration's negatives
    impostor_share: float = 0.1  # of the calibration's non-target weight, what those impostors' windows carry (dev,
    # seeds 0-1, mean pooled F1: 0.1 0.897, 0.2 0.883, 0 0.904; counted window for window, as before, 0.871)
    target_share: float = 0.2  # share of a film's time the target is assumed to speak, weighting calibration (dev films: 0.13-0.21; 0.15-0.25 > 1/3)
    threshold_rule: str = "f1"  # "f1" or "precision"
    target_precision: float = 0.95  # used by the "precision" rule
    seed: int = 0
    fine_tune_layers: str = "head"  # fine-tuning a base trains "head" (pooled-statistics batch-norm and linear
    # layer; the frame layers keep the base's) or "all"
    fine_tuned_share: float = 0.5  # the encoder kept: this share of the fine-tuned weights, the rest the base's
    # (weight-space ensembling; dev, mean pooled F1 over seeds 0-4: 0.5 0.943, 0.7 0.940, 0.3 0.938, 1.0 0.935)


@dataclass(frozen=True)
class TagParams:
    top_k: int = 5  # score = mean of the top-k cosine similarities in the memory
    negative_weight: float = 0.5  # minus this times the top-k mean in the negative memory (dev, seeds 0-4, with
    # the weight averaging: 0.5 0.945 > 0.25 0.943 mean pooled F1; before it 0.25 > 0.5 > 0)
    threshold: float = 0.7  # used until a calibrated one exists
    hysteresis: float = 0.0  # extend segments over cells scoring at least threshold - this (dev: 0 > 0.03)
    edge_db: float = 10.0  # segment edges grow over target-like cells at most this far below the core's level
    min_gap_s: float = 0.5  # merge segments separated by less than this
    min_duration_s: float = 1.0  # drop segments shorter than this: half a window (dev: 1.0-1.5 > 0.5, 2.0)
    batch_windows: int = 256  # windows embedded per encoder call


CHANNEL_CHOICES = ("auto", "centre", "centre-weighted", "average")  # --channels; see speakertag/audio.py


@dataclass(frozen=True)
class ChannelParams:
    """How the channels of a film with a centre channel (5.1, 7.1) become the mono the model
    hears (`--channels`, CHANNEL_CHOICES). A choice per film made when decoding, not
    saved with models. Mono and stereo are always averaged."""
    auto: str = "centre"  # what --channels auto picks for such a film (set by measurement on the 5.1 dev films)
    auto_min_channels: int = 5  # ... for layouts with a centre (FC) and at least this many channels; else average
    front_weight: float = 0.5  # centre-weighted = (FC + w * (FL + FR)) / (1 + 2 * w); surrounds and LFE left out


CHANNELS = ChannelParams()  # the one in use: change `auto` here to change the default choice


@dataclass(frozen=True)
class Params:
    audio: AudioParams = field(default_factory=AudioParams)
    encoder: EncoderParams = field(default_factory=EncoderParams)
    train: TrainParams = field(default_factory=TrainParams)
    tag: TagParams = field(default_factory=TagParams)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Params":
        """Rebuild from `to_dict` output; unknown keys or groups raise ValueError, missing
        keys take their defaults (files written before a param existed)."""
        groups = {"audio": AudioParams, "encoder": EncoderParams, "train": TrainParams, "tag": TagParams}
        if set(d) != set(groups):
            raise ValueError(f"params groups {sorted(d)} do not match {sorted(groups)}")
        built = {}
        for name, klass in groups.items():
            known = {f.name: f for f in dataclasses.fields(klass)}
            unknown = set(d[name]) - set(known)
            if unknown:
                raise ValueError(f"unknown {name} params: {', '.join(sorted(unknown))}")
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in d[name].items()}
            built[name] = klass(**values)
        return cls(**built)


@dataclass(frozen=True)
class SubtitleParams:
    min_share: float = 0.5  # a cue is labelled with a voice whose segments cover at least this share of its time


@dataclass(frozen=True)
class LiveParams:
    block_s: float = 0.25  # seconds of source audio decoded at a time from a live input (finer: sooner segments)
    max_delay_s: float = 2.4  # a segment is given out by the time the windows cover this much audio past its end
    # (2.4: when the window ending 2.5 s after it is in; with a block, segments come <= 2.8 s after their end)
    poll_s: float = 0.2  # --follow: wait this long before looking again for more of a growing file
