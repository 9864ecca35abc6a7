"""Every number that defines speakertag's front end, encoder, training and tagging.

One frozen `Params` object is saved inside every model and memory file, so that a file
always carries the numbers that built it. Derived values (frame counts, seconds) are
computed from the stored ones, never stored twice. A file is read back only with exactly
the params this version knows: an unknown or a missing one means the file was made by
another version of speakertag. This module imports no torch or faiss.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

FORMAT_VERSION = 6  # version of model and memory files; bump on incompatible change
# 3: the model file's checksum covers params and metadata too; speech band, edge quantile,
#    film-like degradation and pool size in Params; files record the speakertag version.
# 4: train.f1_tolerance.
# 5: tag.short_edges.
# 6: train.span_degrade_probability, train.film_bed_stretches.
OLDEST_READABLE_FORMAT = 3
# What each format version added to the params, at the values that give what files of the
# version before did: a file of an older readable version is read with these filled in.
ADDED_IN_FORMAT = {4: {"train": {"f1_tolerance": 0.0}}, 5: {"tag": {"short_edges": False}},
                   6: {"train": {"span_degrade_probability": 1.0, "film_bed_stretches": 0}}}


def speakertag_version(missing: str = "unknown") -> str:
    """The installed speakertag's version; `missing` when run from a checkout never installed
    (files say "unknown", stamps and reports "")."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("speakertag")
    except PackageNotFoundError:
        return missing


class ParamsMismatch(ValueError):
    """Stored params with keys this version does not know, or without keys it needs."""


class ParamsOutOfRange(ValueError):
    """Stored params whose values no run could have saved (a zero batch, a NaN threshold)."""


# Fields that must be at least 1 (counts) or above 0 (sizes, seconds); every number must be finite.
_AT_LEAST_ONE = {"audio": ("sample_rate_hz", "n_fft", "hop_length", "n_mels", "window_frames", "hop_frames"),
                 "encoder": ("channels", "first_kernel", "attention_channels", "embedding_dim"),
                 "tag": ("top_k", "batch_windows")}
_NOT_NEGATIVE = {"audio": ("f_min_hz", "log_floor"),
                 "tag": ("negative_weight", "hysteresis", "edge_db", "min_gap_s", "min_duration_s")}


def check_ranges(p: "Params") -> None:
    """Raise ParamsOutOfRange naming the first stored value that no run could use."""
    import math

    for group in ("audio", "encoder", "train", "tag", "augment"):
        values = dataclasses.asdict(getattr(p, group))
        for key, v in values.items():
            for x in (v if isinstance(v, tuple) else (v,)):
                if isinstance(x, bool) or not isinstance(x, (int, float)):
                    continue
                if not math.isfinite(x) or (key in _AT_LEAST_ONE.get(group, ()) and x < 1) \
                        or (key in _NOT_NEGATIVE.get(group, ()) and x < 0):
                    raise ParamsOutOfRange(f"{group}.{key} = {v} is out of range")
    if not p.audio.f_min_hz < p.audio.f_max_hz <= p.audio.sample_rate_hz / 2:
        raise ParamsOutOfRange(f"audio.f_max_hz = {p.audio.f_max_hz} is out of range")


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
    speech_band_hz: tuple[float, float] = (250.0, 4000.0)  # mel bins peaking here measure a cell's level
    # (segment edges): where voiced speech has most of its energy

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
    def cells_per_window(self) -> int:
        """Hop-long cells one window spans (4: a 2 s window, 0.5 s cells)."""
        return max(1, round(self.window_frames / self.hop_frames))

    @property
    def window_samples(self) -> int:
        """Samples that one window's frames cover."""
        return self.n_fft + (self.window_frames - 1) * self.hop_length

    @property
    def silence_db(self) -> float:
        """A cell whose speech-band level (features.cell_levels_db) is under this holds less power
        than the log-mel floor: digital silence (a gap in the film's audio) or as good as; the
        model hears nothing there, and segments never include it."""
        return 10 * math.log10(2 * self.log_floor)


@dataclass(frozen=True)
class EncoderParams:
    channels: int = 192  # conv1d channels of the first layer and of each residual block
    first_kernel: int = 5  # frames seen by the first conv1d
    dilations: tuple[int, ...] = (2, 3, 4)  # one residual block (kernel 3) per dilation
    attention_channels: int = 64  # hidden channels of the attentive pooling
    embedding_dim: int = 128


@dataclass(frozen=True)
class AugmentParams:
    """How `augment.film_like` degrades a clip (the SNR range is TrainParams.snr_db_range)."""
    reverb_probability: float = 0.3
    reverb_rt60_s_range: tuple[float, float] = (0.2, 0.8)
    pool_background_probability: float = 0.45  # background: one crop of the noise pool
    babble_probability: float = 0.25  # background: several pool crops summed; else a generated one
    babble_crops_range: tuple[int, int] = (3, 7)  # crops summed in a babble, upper bound excluded
    low_pass_probability: float = 0.25
    low_pass_cutoff_hz_range: tuple[float, float] = (3000.0, 7000.0)
    level_db_range: tuple[float, float] = (-20.0, 6.0)  # the result's level around level_rms
    level_rms: float = 0.1


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
    augment_probability: float = 0.8  # share of training windows degraded film-like
    negative_augment_probability: float = 0.7  # share of negative validation and calibration windows degraded
    pool_windows: int = 1024  # mining and validation pools: a random subset of larger clip sets
    augmented_memory_copies: int = 1  # noisy copies of each positive window in the memory
    calibration_rounds: int = 2  # film-like copies of each other window scored for calibration, twice as many of
    # the target's: a steadier threshold (docs/experiments.md#the-figures-behind-the-defaults-issue-36)
    impostor_speed_factors: tuple[float, ...] = (0.9, 1.1)  # speed copies of each impostor, as more unseen voices
    span_degrade_probability: float = 0.5  # share of the calibration's copies of film-span positives degraded
    # film-like (they are film sound already; every other clip's copies are)
    film_bed_stretches: int = 12  # with film-span positives: stretches of the film away from them (train.film_beds)
    # as more backgrounds of the film-like degradation
    calibration_impostors: int = 16  # impostor voices most like the target that join the calibration's negatives
    impostor_share: float = 0.1  # of the calibration's non-target weight, what those impostors' windows carry
    # (the best share measured: docs/experiments.md#the-figures-behind-the-defaults-issue-36)
    target_share: float = 0.2  # share of a film's time the target is assumed to speak, weighting calibration
    # (what the dev films' targets speak: docs/experiments.md#the-figures-behind-the-defaults-issue-36)
    threshold_rule: str = "f1"  # "f1" or "precision"
    f1_tolerance: float = 0.02  # rule "f1": the thresholds whose calibration F1 is within this of the best are
    # as good (F1's sampling noise); the one in the middle of their range is taken: a steadier threshold
    # (docs/experiments.md#the-threshold-the-middle-of-the-near-best-ones-trainparamsf1_tolerance)
    edge_quantile: float = 0.25  # of the target's calibration scores: the edge threshold (lower ones spread
    # false alarms: docs/experiments.md#the-figures-behind-the-defaults-issue-36)
    min_target_s: float = 10.0  # seconds of positive clips train needs at least (less tags every window:
    # docs/experiments.md#the-figures-behind-the-defaults-issue-36)
    max_negative_share: float = 0.5  # a calibrated threshold above which more of the negative calibration
    # windows score than this tags film-like sound of every kind: refused
    target_precision: float = 0.95  # used by the "precision" rule
    seed: int = 0
    fine_tune_layers: str = "head"  # fine-tuning a base trains "head" (pooled-statistics batch-norm and linear
    # layer; the frame layers keep the base's) or "all"
    fine_tuned_share: float = 0.5  # the encoder kept: this share of the fine-tuned weights, the rest the base's
    # (weight-space ensembling, steadier than either: docs/experiments.md#the-figures-behind-the-defaults-issue-36)


@dataclass(frozen=True)
class TagParams:
    top_k: int = 5  # score = mean of the top-k cosine similarities in the memory
    negative_weight: float = 0.5  # minus this times the top-k mean in the negative memory: penalises windows
    # that sound like the other sounds (docs/experiments.md#the-figures-behind-the-defaults-issue-36)
    threshold: float = 0.7  # used until a calibrated one exists
    hysteresis: float = 0.0  # extend segments over cells scoring at least threshold - this (0: docs/experiments.md#the-figures-behind-the-defaults-issue-36)
    edge_db: float = 10.0  # segment edges grow over target-like cells at most this far below the core's level
    min_gap_s: float = 0.5  # merge segments separated by less than this
    min_duration_s: float = 1.0  # drop segments shorter than this: half a window (docs/experiments.md#the-figures-behind-the-defaults-issue-36)
    short_edges: bool = True  # move segment edges to where ~1 s windows stop looking like the voice
    # (segments.ShortEdges; docs/experiments.md#the-figures-behind-the-defaults-issue-36)
    batch_windows: int = 256  # windows embedded per encoder call

    @property
    def score_range(self) -> tuple[float, float]:
        """The bounds of a window's score (scoring.Scorer): a top-k mean cosine, in [-1, 1],
        minus negative_weight times another."""
        return -1.0 - self.negative_weight, 1.0 + self.negative_weight


CHANNEL_CHOICES = ("auto", "centre", "centre-weighted", "average", "coherent")  # --channels; see speakertag/audio.py


@dataclass(frozen=True)
class ChannelParams:
    """How the channels of a film with a centre channel (5.1, 7.1) become the mono the model
    hears (`--channels`, CHANNEL_CHOICES). A choice per film made when decoding, not
    saved with models. Mono is heard as it is; stereo is averaged unless `coherent` is asked for."""
    auto: str = "centre"  # what --channels auto picks for such a film (set by measurement on the 5.1 dev films)
    auto_min_channels: int = 5  # ... for layouts with a centre (FC) and at least this many channels; else average
    front_weight: float = 0.5  # centre-weighted = (FC + w * (FL + FR)) / (1 + 2 * w); surrounds and LFE left out


@dataclass(frozen=True)
class StereoParams:
    """How `--channels coherent` hears a stereo film: the mid signal weighted, in each STFT
    cell, by the inter-channel coherence (speakertag/stereo.py)."""
    frame_s: float = 0.046  # STFT frame, rounded to a power of two of samples (1024 at 22050 Hz); hop: half
    average_s: float = 0.1  # a cell's coherence is estimated over the frames of this last time and 3 bins
    # (the best of those measured: docs/experiments.md#the-figures-behind-the-defaults-issue-36)


CHANNELS = ChannelParams()  # the one in use: change `auto` here to change the default choice
STEREO = StereoParams()  # the one `--channels coherent` uses


@dataclass(frozen=True)
class Params:
    audio: AudioParams = field(default_factory=AudioParams)
    encoder: EncoderParams = field(default_factory=EncoderParams)
    train: TrainParams = field(default_factory=TrainParams)
    tag: TagParams = field(default_factory=TagParams)
    augment: AugmentParams = field(default_factory=AugmentParams)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, format_version: int = FORMAT_VERSION) -> "Params":
        """Rebuild from `to_dict` output of a file of `format_version`. Unknown or missing groups
        or keys raise ParamsMismatch (a ValueError): a default would silently change what the
        file's numbers meant; values no run could use raise ParamsOutOfRange. What later versions added (ADDED_IN_FORMAT) is filled in at the
        values that keep an older file's meaning."""
        if isinstance(d, dict):
            d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
            for version in range(format_version + 1, FORMAT_VERSION + 1):
                for group, added in ADDED_IN_FORMAT.get(version, {}).items():
                    if isinstance(d.get(group), dict):
                        if set(added) & set(d[group]):
                            raise ParamsMismatch(f"{group} params of format {format_version} hold "
                                                 f"{', '.join(sorted(set(added) & set(d[group])))}")
                        d[group].update(added)
        groups = {"audio": AudioParams, "encoder": EncoderParams, "train": TrainParams, "tag": TagParams,
                  "augment": AugmentParams}
        if not isinstance(d, dict) or set(d) != set(groups):
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ParamsMismatch(f"params groups {got} do not match {sorted(groups)}")
        built = {}
        for name, klass in groups.items():
            if not isinstance(d[name], dict):
                raise ParamsMismatch(f"{name} params are not a table")
            known = {f.name for f in dataclasses.fields(klass)}
            unknown, missing = set(d[name]) - known, known - set(d[name])
            if unknown or missing:
                raise ParamsMismatch("; ".join(f"{what} {name} params: {', '.join(sorted(keys))}"
                                               for what, keys in (("unknown", unknown), ("missing", missing)) if keys))
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in d[name].items()}
            built[name] = klass(**values)
        params = cls(**built)
        check_ranges(params)
        return params


@dataclass(frozen=True)
class SubtitleParams:
    min_share: float = 0.5  # a cue is labelled with a voice whose segments cover at least this share of its time


@dataclass(frozen=True)
class LiveParams:
    block_s: float = 0.25  # seconds of source audio decoded at a time from a live input (finer: sooner segments)
    max_delay_s: float = 2.4  # a segment is given out by the time the windows cover this much audio past its end
    # (2.4: when the window ending 2.5 s after it is in; with a block, segments come <= 2.8 s after their end)
    poll_s: float = 0.2  # --follow: wait this long before looking again for more of a growing file
    # An MP4 piped in is copied to a temporary file first: at most this much (a long film in
    # high definition fits), and never so much that less than spool_reserve_bytes stays free
    max_spool_bytes: int = 32 * 2**30
    spool_reserve_bytes: int = 2**30
