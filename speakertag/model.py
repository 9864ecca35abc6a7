"""The conv1d speaker encoder and its model file.

A model file is `torch.save` of plain tensors, strings and numbers only, loaded with
`weights_only=True`: it can hold no code. It carries the format version, the full params,
a fingerprint (SHA-256 of the weights) that is checked on load and recorded by every
memory made with the model, and free-form metadata (voice name, provenance, history).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from .errors import SpeakertagError, check_format, first_line
from .io_utils import atomic_write_bytes
from .params import FORMAT_VERSION, AudioParams, EncoderParams, Params

MODEL_FILE = "model.pt"
IMPOSTORS_DIR = "impostors"  # clips of voices the model never heard, for calibration


def shipped_base_dir() -> Path | None:
    """The base encoder shipped in the repository's models/base folder, if present."""
    path = Path(__file__).resolve().parent.parent / "models" / "base"
    return path if (path / MODEL_FILE).exists() else None


def impostors_of(model_dir: Path | None) -> list[Path]:
    """[model_dir/impostors] when that folder exists: voices held out of the model's training."""
    return [model_dir / IMPOSTORS_DIR] if model_dir is not None and (model_dir / IMPOSTORS_DIR).is_dir() else []


class Encoder(nn.Module):
    """Log-mel windows -> unit-length speaker embeddings.

    Per-window mean normalisation of every mel bin (removes level and channel colour),
    blocks of conv1d/batch-norm/ReLU/max-pool over time with mel bins as channels,
    mean + standard-deviation pooling over time, a linear layer, L2 normalisation.
    """

    def __init__(self, audio: AudioParams, enc: EncoderParams):
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm1d(audio.n_mels)]
        in_ch = audio.n_mels
        for ch, k, pool in zip(enc.channels, enc.kernel_sizes, enc.pool_sizes):
            layers += [nn.Conv1d(in_ch, ch, k, padding=k // 2, bias=False), nn.BatchNorm1d(ch), nn.ReLU()]
            if pool > 1:
                layers.append(nn.MaxPool1d(pool))
            in_ch = ch
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(2 * in_ch, enc.embedding_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows: (batch, n_mels, n_frames) log-mel -> (batch, embedding_dim), unit L2 norm."""
        x = windows - windows.mean(dim=-1, keepdim=True)
        return self._finish(self.blocks(x))

    def _finish(self, h: torch.Tensor) -> torch.Tensor:
        """(batch, channels, frames) last block output -> unit embeddings."""
        stats = torch.cat([h.mean(dim=-1), h.std(dim=-1)], dim=1)
        return F.normalize(self.head(stats), dim=-1)

    @torch.inference_mode()
    def forward_overlapping(self, windows: torch.Tensor, hop_frames: int) -> torch.Tensor:
        """The same as forward() in eval mode, for consecutive windows `hop_frames` apart
        (a film's windows), about twice as fast: the first convolution, the costliest layer,
        runs once over the frames the windows share instead of once per window.

        It is linear: conv(BN0(x - m)) = conv(BN0(x)) - (sum of taps) @ (BN0 scale * m) for a
        window's mean m, except at the window's two edges, where per-window zero padding
        hides the neighbouring frames; those few outputs are computed per window.
        """
        bn0, conv, rest = self.blocks[0], self.blocks[1], self.blocks[2:]
        n, _, width = windows.shape
        pad = conv.padding[0]
        scale = bn0.weight / torch.sqrt(bn0.running_var + bn0.eps)  # BN0(x) = scale * x + shift
        shift = bn0.bias - scale * bn0.running_mean
        # The contiguous frames behind the windows: the first window, then each one's new hop.
        frames = torch.cat([windows[0], windows[1:, :, width - hop_frames:].permute(1, 0, 2).reshape(windows.shape[1], -1)], 1)
        shared = F.conv1d(scale[:, None] * frames + shift[:, None], conv.weight)  # (ch, n_frames - 2 pad)
        interior = shared.unfold(1, width - 2 * pad, hop_frames).permute(1, 0, 2)  # (n, ch, width - 2 pad)
        mean = windows.mean(dim=-1)  # (n, n_mels)
        interior = interior - (conv.weight.sum(-1) @ (scale * mean).T).T[:, :, None]
        z_left = scale[:, None] * (windows[:, :, :2 * pad] - mean[:, :, None]) + shift[:, None]
        z_right = scale[:, None] * (windows[:, :, width - 2 * pad:] - mean[:, :, None]) + shift[:, None]
        left = F.conv1d(F.pad(z_left, (pad, 0)), conv.weight)  # outputs 0 .. pad - 1
        right = F.conv1d(F.pad(z_right, (0, pad)), conv.weight)  # the last pad outputs
        return self._finish(rest(torch.cat([left, interior, right], dim=2)))


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


def new_model(params: Params, meta: dict | None = None) -> Model:
    return Model(params, Encoder(params.audio, params.encoder), dict(meta or {}))


def fingerprint(encoder: nn.Module) -> str:
    """SHA-256 over the names and bytes of all weights and buffers, first 16 hex digits."""
    h = hashlib.sha256()
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_model(model: Model, directory: str | Path) -> Path:
    """Write DIR/model.pt atomically; returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()}
    payload = {
        "format": "speakertag-model",
        "format_version": FORMAT_VERSION,
        "params": model.params.to_dict(),
        "fingerprint": model.fingerprint,
        "meta": model.meta,
        "state_dict": state,
    }
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
    """Load a model folder (or its model.pt) without running code; checks version and fingerprint."""
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
    check_format(payload, "model", file, FORMAT_VERSION)
    try:
        params = Params.from_dict(payload["params"])
        encoder = Encoder(params.audio, params.encoder)
        encoder.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise SpeakertagError(f"model {file} is damaged: {first_line(e)}") from None
    model = Model(params, encoder.eval().to(resolve_device(device)), dict(payload.get("meta", {})))
    if model.fingerprint != payload.get("fingerprint"):
        raise SpeakertagError(f"model {file} failed its checksum: the weights were changed or damaged")
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
