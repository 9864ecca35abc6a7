"""The conv1d speaker encoder and its model file.

A model file is `torch.save` of plain tensors, strings and numbers only, loaded with
`weights_only=True`: it can hold no code. It carries the format version, the full params,
a fingerprint (SHA-256 of the weights) that every memory made with the model records,
free-form metadata (voice name, provenance, history, the speakertag version that wrote
it), and a checksum (SHA-256 of all of these and the weights) verified on load.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .errors import SpeakertagError, check_format, first_line
from .io_utils import atomic_write_bytes
from .params import (FORMAT_VERSION, OLDEST_READABLE_FORMAT, AudioParams, EncoderParams, Params, ParamsMismatch,
                     ParamsOutOfRange, speakertag_version)

MODEL_FILE = "model.pt"
IMPOSTORS_DIR = "impostors"  # clips of voices the model never heard, for calibration
NEGATIVES_DIR = "negatives"  # other voices (heard in pretraining), music and noise: train's negatives by default


def shipped_base_dir() -> Path | None:
    """The shipped base encoder's folder: speakertag/base_model inside an installed wheel (the
    repository's models/base, carried as package data), else models/base beside the package in
    a checkout or an editable install; None when neither holds a model."""
    here = Path(__file__).resolve().parent
    for path in (here / "base_model", here.parent / "models" / "base"):
        if (path / MODEL_FILE).is_file():
            return path
    return None


def impostors_of(model_dir: Path | None) -> list[Path]:
    """[model_dir/impostors] when that folder exists: voices held out of the model's training."""
    return [model_dir / IMPOSTORS_DIR] if model_dir is not None and (model_dir / IMPOSTORS_DIR).is_dir() else []


def negatives_of(model_dir: Path | None) -> list[Path]:
    """[model_dir/negatives] when that folder exists: the other sounds `train` learns from when
    it is given none (voices of the model's pretraining, never the impostors; music; noise)."""
    return [model_dir / NEGATIVES_DIR] if model_dir is not None and (model_dir / NEGATIVES_DIR).is_dir() else []


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 dot products (AVX512-BF16 or AMX-BF16)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


class Encoder(nn.Module):
    """Log-mel windows -> unit-length speaker embeddings (a small ECAPA-style TDNN).

    Every layer before the pooling works frame by frame on a fixed neighbourhood, so a film's
    overlapping windows share it (`forward_overlapping`):
    - each frame minus its mean over the mel bins: a gain (a constant in log-mel) changes nothing;
    - batch-norm of every mel bin, a conv1d (kernel `first_kernel`) to `channels` channels;
    - residual blocks of dilated conv1d (kernel 3) / batch-norm / ReLU, one per dilation;
    - the blocks' outputs stacked (multi-layer aggregation, 3 x channels);
    - attentive statistics pooling: per-channel attention over the window's frames, the
      attention-weighted mean and standard deviation;
    - batch-norm, a linear layer, L2 normalisation.
    The convolutions are unpadded: a window of n frames yields n - 2 * context_frames frame
    features, each from real frames only, so that a window's embedding is the same whether it
    is embedded alone or as part of a film.
    """

    SHARED_SHIFT_MAX = 60.0  # sliding_pooled_stats: exp(-60) ~ 1e-26, a normal float32
    force_float32 = False  # eval_dtype: True keeps the convolutions in float32 on every CPU

    def __init__(self, audio: AudioParams, enc: EncoderParams):
        super().__init__()
        ch = enc.channels
        self.input_norm = nn.BatchNorm1d(audio.n_mels)
        self.first = nn.Sequential(nn.Conv1d(audio.n_mels, ch, enc.first_kernel, bias=False),
                                   nn.BatchNorm1d(ch), nn.ReLU())
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv1d(ch, ch, 3, dilation=d, bias=False),
                                                  nn.BatchNorm1d(ch), nn.ReLU()) for d in enc.dilations)
        self.dilations = tuple(enc.dilations)
        stacked = ch * len(enc.dilations)
        self.attention = nn.Sequential(nn.Conv1d(stacked, enc.attention_channels, 1), nn.ReLU(),
                                       nn.BatchNorm1d(enc.attention_channels),
                                       nn.Conv1d(enc.attention_channels, stacked, 1))
        self.pool_norm = nn.BatchNorm1d(2 * stacked)
        self.head = nn.Linear(2 * stacked, enc.embedding_dim)
        self.context_frames = (enc.first_kernel - 1) // 2 + sum(self.dilations)

    def frame_features(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, n_mels, n) log-mel -> frame features and attention logits, each
        (batch, 3 x channels, n - 2 * context_frames). In eval mode every batch-norm is
        folded into the convolution beside it (`folded_convs`): the same numbers, fewer passes;
        and the convolutions run in `eval_dtype`, the type both outputs have then (the pooling
        is float32), which moves scores by at most about 0.003 (docs/experiments.md#the-figures-behind-the-defaults-issue-36)."""
        x = frames - frames.mean(dim=1, keepdim=True)
        if self.training:
            x = self.first(self.input_norm(x))
        else:
            dtype = self.eval_dtype(x.device)
            (w, b), *convs, (wa, ba), (wb, bb) = [(w.to(dtype), b.to(dtype)) for w, b in self.folded_convs()]
            x = F.relu_(F.conv1d(x.to(dtype), w, b))
        outs = []
        for i, d in enumerate(self.dilations):
            y = self.blocks[i](x) if self.training else F.relu_(F.conv1d(x, *convs[i], dilation=d))
            x = x[:, :, d:-d] + y
            outs.append(x)
        n = outs[-1].shape[-1]
        h = torch.cat([o[:, :, (o.shape[-1] - n) // 2:(o.shape[-1] - n) // 2 + n] for o in outs], dim=1)
        return h, (self.attention(h) if self.training else F.conv1d(F.relu_(F.conv1d(h, wa, ba)), wb, bb))

    def eval_dtype(self, device: torch.device) -> torch.dtype:
        """The convolutions' number type in eval mode: bfloat16 where this CPU multiplies it
        natively (AVX512-BF16 or AMX), half the time of float32 (7.5 s instead of 11 s of
        encoder for a 2-hour film), else float32. `force_float32` (an attribute) keeps float32
        everywhere."""
        if device.type == "cpu" and not self.force_float32 and cpu_has_bf16():
            return torch.bfloat16
        return torch.float32

    def folded_convs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, bias) of each convolution with the eval-mode batch-norms beside it folded
        in: the first (with the input norm before it), one per block, the attention's two
        (the norm after the first's ReLU goes into the second). Exact: the convolutions are unpadded."""
        def scale_shift(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            return s, bn.bias - bn.running_mean * s

        def then_norm(w: torch.Tensor, b: torch.Tensor, bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
            s, t = scale_shift(bn)
            return w * s[:, None, None], b * s + t

        s_in, t_in = scale_shift(self.input_norm)
        w = self.first[0].weight
        out = [then_norm(w * s_in[None, :, None], (w * t_in[None, :, None]).sum((1, 2)), self.first[1])]
        out += [then_norm(blk[0].weight, torch.zeros_like(blk[1].bias), blk[1]) for blk in self.blocks]
        a1, _, bn, a2 = self.attention
        s, t = scale_shift(bn)
        out += [(a1.weight, a1.bias), (a2.weight * s[None, :, None], a2.bias + a2.weight[:, :, 0] @ t)]
        return out

    @staticmethod
    def pooled_stats(h: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Frame features and attention logits (batch, C, n) -> (batch, 2 C): the attention-
        weighted mean and standard deviation of every channel over the frames, in float32."""
        h, logits = h.float(), logits.float()
        w = torch.softmax(logits, dim=-1)
        mean = (w * h).sum(-1)
        std = ((w * h.square()).sum(-1) - mean.square()).clamp_min(1e-6).sqrt()
        return torch.cat([mean, std], dim=1)

    def embed_stats(self, stats: torch.Tensor) -> torch.Tensor:
        """(batch, 2 C) pooled statistics -> (batch, embedding_dim) unit embeddings: the head,
        the only part that fine-tuning on a user's clips changes."""
        return F.normalize(self.head(self.pool_norm(stats)), dim=-1)

    def stats(self, windows: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, n_frames) log-mel -> (batch, 2 C) pooled statistics."""
        return self.pooled_stats(*self.frame_features(windows))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows: (batch, n_mels, n_frames) log-mel, n_frames > 2 * context_frames
        -> (batch, embedding_dim), unit L2 norm."""
        return self.embed_stats(self.stats(windows))

    @classmethod
    def sliding_pooled_stats(cls, h: torch.Tensor, logits: torch.Tensor, width: int, hop: int,
                             chunk_windows: int = 16) -> torch.Tensor:
        """pooled_stats of every window [j * hop, j * hop + width) of one long stretch of frame
        features and logits (C, n_frames) -> (n_windows, 2 C), a few windows at a time (they
        stay in cache). Each frame's softmax weight is computed once for all the windows that
        hold it, shifted by the chunk's largest logit instead of each window's (the softmax is
        the same): half the time of pooling each window apart. A chunk whose logits span more
        than SHARED_SHIFT_MAX, where a window's weights could underflow, is pooled window by window."""
        n_windows = 1 + (h.shape[1] - width) // hop
        parts = []
        for i in range(0, n_windows, chunk_windows):
            span = slice(i * hop, (min(i + chunk_windows, n_windows) - 1) * hop + width)
            hs, ls = h[:, span].float(), logits[:, span].float()  # float32 a chunk at a time: in cache
            top = ls.amax(dim=1, keepdim=True)
            if float((top - ls.amin(dim=1, keepdim=True)).max()) > cls.SHARED_SHIFT_MAX:
                parts.append(cls.pooled_stats(hs.unfold(1, width, hop).transpose(0, 1),
                                              ls.unfold(1, width, hop).transpose(0, 1)))
                continue
            e = torch.exp(ls - top)
            eh = e * hs

            def window_sums(x: torch.Tensor) -> torch.Tensor:
                return x.unfold(1, width, hop).sum(-1)  # (C, windows)

            total = window_sums(e)
            mean = window_sums(eh) / total
            std = (window_sums(eh * hs) / total - mean.square()).clamp_min(1e-6).sqrt()
            parts.append(torch.cat([mean, std]).T)
        return torch.cat(parts)

    @staticmethod
    def half_cell_pooled_stats(h: torch.Tensor, logits: torch.Tensor, n: int, hop: int,
                               chunk_hops: int = 16) -> torch.Tensor:
        """pooled_stats of windows three half-hops long, two per hop: for j < n, frames
        [j hop, j hop + hop // 2 + hop) and [j hop + hop // 2, (j + 2) hop) of one stretch of
        frame features and logits (C, >= (n + 1) hop) -> (n, 2, 2 C). Each half hop is summed
        under its hop's largest logit, and a window's three halves rescaled to the largest of
        theirs (no underflow, whatever the logits span)."""
        c, half = h.shape[0], hop // 2
        tops, parts = [], []
        for i in range(0, n + 1, chunk_hops):  # a few hops at a time: they stay in cache
            k = min(chunk_hops, n + 1 - i)
            hh = h[:, i * hop:(i + k) * hop].float().reshape(c, k, hop)
            ll = logits[:, i * hop:(i + k) * hop].float().reshape(c, k, hop)
            top = ll.amax(-1)  # (C, k): each hop's largest logit
            e = torch.exp(ll - top[..., None])
            eh = e * hh
            # (3, C, 2 k): the sums over each half hop, in time order
            parts.append(torch.stack([torch.stack([x[..., :half].sum(-1), x[..., half:].sum(-1)], -1).reshape(c, 2 * k)
                                      for x in (e, eh, eh * hh)]))
            tops.append(top)
        blocks = torch.cat(parts, 2)  # (3, C, 2 n + 2) half hops in time order
        top = torch.cat(tops, 1)
        tops = top.repeat_interleave(2, dim=1)  # (C, 2 n + 2)
        m = torch.maximum(tops[:, :-2], tops[:, 2:])  # a window's three halves span two hops
        sums = sum(torch.exp(tops[:, k:k + 2 * n] - m) * blocks[:, :, k:k + 2 * n] for k in range(3))
        mean = sums[1] / sums[0]
        std = (sums[2] / sums[0] - mean.square()).clamp_min(1e-6).sqrt()
        return torch.cat([mean, std]).T.reshape(n, 2, 2 * c)

    def overlapping_frame_features(self, windows: torch.Tensor, hop_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """frame_features of consecutive windows `hop_frames` apart (a film's), computed once over
        the frames they share: (C, n_frames) features and attention logits."""
        n, n_mels, width = windows.shape
        frames = torch.cat([windows[0], windows[1:, :, width - hop_frames:].permute(1, 0, 2).reshape(n_mels, -1)], 1)
        h, logits = self.frame_features(frames[None])
        return h[0], logits[0]

    def long_from(self, h: torch.Tensor, logits: torch.Tensor, window_frames: int, hop_frames: int) -> torch.Tensor:
        """(n, embedding_dim) embeddings of the windows whose overlapping_frame_features these are."""
        return self.embed_stats(self.sliding_pooled_stats(h, logits, window_frames - 2 * self.context_frames, hop_frames))

    def short_from(self, h: torch.Tensor, logits: torch.Tensor, first: int, stop: int, hop_frames: int) -> torch.Tensor:
        """(stop - first, 2, embedding_dim) embeddings of the short windows of windows first..stop - 1
        (half_cell_pooled_stats: 1.5 hops of frame features, 2 context-widths more of input, two
        per window, starting at its start and half a hop in)."""
        part = slice(first * hop_frames, (stop + 1) * hop_frames)
        n = stop - first
        return self.embed_stats(self.half_cell_pooled_stats(h[:, part], logits[:, part], n, hop_frames)
                                .reshape(2 * n, -1)).reshape(n, 2, -1)

    @torch.inference_mode()
    def forward_overlapping(self, windows: torch.Tensor, hop_frames: int) -> torch.Tensor:
        """The same as forward() in eval mode, for consecutive windows `hop_frames` apart
        (a film's windows): every layer before the pooling runs once over the frames the
        windows share (a quarter of the work at a 0.5 s hop), each window pooled from a view of them."""
        return self.long_from(*self.overlapping_frame_features(windows, hop_frames), windows.shape[-1], hop_frames)


@dataclass
class Model:
    params: Params
    encoder: Encoder
    meta: dict = field(default_factory=dict)  # name, provenance, history: JSON-able values

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.encoder)

    @property
    def name(self) -> str:
        return self.meta.get("name", "target")

    @property
    def embeds_fast(self) -> bool:
        """Whether the encoder's convolutions run faster than float32 ones on a CPU core: on a
        GPU, or in bfloat16 (`Encoder.eval_dtype`, twice as fast)."""
        device = next(self.encoder.parameters()).device
        return device.type != "cpu" or self.encoder.eval_dtype(device) != torch.float32


def new_model(params: Params, meta: dict | None = None) -> Model:
    return Model(params, Encoder(params.audio, params.encoder), dict(meta or {}))


def fingerprint(encoder: nn.Module) -> str:
    """SHA-256 over the names and bytes of all weights and buffers, first 16 hex digits."""
    h = hashlib.sha256()
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def payload_checksum(payload: dict) -> str:
    """SHA-256 over everything in a model file but the checksum itself: its header (format,
    params, fingerprint, metadata; as sorted JSON) and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    header = {k: v for k, v in payload.items() if k not in ("checksum", "state_dict")}
    h.update(json.dumps(header, sort_keys=True).encode())
    for name, t in sorted(payload["state_dict"].items()):
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_model(model: Model, directory: str | Path) -> Path:
    """Write DIR/model.pt atomically; returns its path. The metadata records the speakertag
    version that writes it (`speakertag_version`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()}
    payload = {
        "format": "speakertag-model",
        "format_version": FORMAT_VERSION,
        "params": model.params.to_dict(),
        "fingerprint": model.fingerprint,
        "meta": {**model.meta, "speakertag_version": speakertag_version()},
        "state_dict": state,
    }
    payload["checksum"] = payload_checksum(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    path = directory / MODEL_FILE
    atomic_write_bytes(path, buf.getvalue())
    return path


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """None or "auto": CUDA when available, else the CPU; "cuda" without a GPU is an error."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpeakertagError("--device cuda asked for, but no CUDA GPU is available")
    return torch.device(name)


def _torch_reason(e: Exception) -> str:
    """A short reason from torch.load's error, without its advice to load the file unsafely."""
    if isinstance(e, (pickle.UnpicklingError, KeyError)):
        return "not a torch file, or one holding objects other than weights"
    return first_line(e)


def load_model(path: str | Path, device: str | torch.device | None = None) -> Model:
    """Load a model folder (or its model.pt) without running code; checks its version, its
    checksum (params, metadata and weights), that it holds exactly the params this version
    knows, and the weights' fingerprint."""
    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.exists():
        raise SpeakertagError(f"no model at {path}: {file.name} is missing")
    if not file.is_file():
        raise SpeakertagError(f"not a valid speakertag model file: {file} (a folder)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for a damaged file
        code = re.search(r"GLOBAL (\S+)", str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if code:  # weights_only refused to import something: the file would run code
            raise SpeakertagError(f"refused to load {file}: it would run {code.group(1)} when loaded "
                                  "(a model file holds only weights and numbers)") from None
        raise SpeakertagError(f"not a valid speakertag model file: {file} ({_torch_reason(e)})") from None
    version = check_format(payload, "model", file, FORMAT_VERSION, OLDEST_READABLE_FORMAT)
    try:
        intact = payload["checksum"] == payload_checksum(payload)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError):  # no checksum, no tensors, no JSON
        intact = False
    if not intact:
        raise SpeakertagError(f"model {file} failed its checksum: its params, metadata or weights were changed "
                              "or damaged")
    try:
        params = Params.from_dict(payload["params"], version)
    except ParamsMismatch as e:
        raise SpeakertagError(f"model {file} was made by another version of speakertag "
                              f"(format {FORMAT_VERSION}): {first_line(e)}") from None
    except ParamsOutOfRange as e:
        raise SpeakertagError(f"model {file} is damaged: {first_line(e)}") from None
    try:
        encoder = Encoder(params.audio, params.encoder)
        encoder.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise SpeakertagError(f"model {file} is damaged: {first_line(e)}") from None
    model = Model(params, encoder.eval().to(resolve_device(device)), dict(payload.get("meta", {})))
    if model.fingerprint != payload.get("fingerprint"):
        raise SpeakertagError(f"model {file} failed its checksum: its weights do not match their fingerprint")
    return model


@torch.inference_mode()
def embed(model: Model, windows: torch.Tensor, hop_frames: int | None = None) -> torch.Tensor:
    """(batch, n_mels, window_frames) log-mel -> (batch, embedding_dim) float32 on the CPU.
    hop_frames: the windows are consecutive, this many frames apart (a film's): faster."""
    model.encoder.eval()
    device = next(model.encoder.parameters()).device
    windows = windows.to(device)
    if hop_frames is None or len(windows) < 2:
        return model.encoder(windows).float().cpu()
    return model.encoder.forward_overlapping(windows, hop_frames).float().cpu()


@torch.inference_mode()
def embed_keeping_frames(model: Model, windows: torch.Tensor, hop_frames: int
                         ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """embed() of consecutive windows `hop_frames` apart, (n, embedding_dim) float32 on the CPU,
    and their frame features and attention logits (Encoder.overlapping_frame_features), from
    which embed_short pools short windows without running the convolutions again."""
    model.encoder.eval()
    device = next(model.encoder.parameters()).device
    h, logits = model.encoder.overlapping_frame_features(windows.to(device), hop_frames)
    return model.encoder.long_from(h, logits, windows.shape[-1], hop_frames).float().cpu(), (h, logits)


@torch.inference_mode()
def embed_short(model: Model, frames: tuple[torch.Tensor, torch.Tensor], spans: Sequence[tuple[int, int]],
                hop_frames: int) -> tuple[torch.Tensor, np.ndarray]:
    """The short windows (Encoder.short_from) of the windows in each [first, stop) of spans, from
    embed_keeping_frames' frames: (2 m, embedding_dim) float32 on the CPU, and (2 m,) the index
    of each, 2 j + o for the one starting o half hops after window j."""
    h, logits = frames
    parts = [model.encoder.short_from(h, logits, a, b, hop_frames).reshape(2 * (b - a), -1).float().cpu()
             for a, b in spans if b > a]
    index = np.concatenate([np.arange(2 * a, 2 * b) for a, b in spans]) if spans else np.zeros(0, np.int64)
    return torch.cat(parts) if parts else torch.zeros(0, model.params.encoder.embedding_dim), index

