"""The positive memory: embeddings of the target's windows, searched with faiss.

A memory file is a NumPy .npz (loaded with allow_pickle=False) holding the embeddings of
the target's windows and of the negative windows as float32, and one JSON header: format
version, the params, the fingerprint of the model that made the embeddings, the tagging
threshold and how it was chosen, the voice name, the speakertag version that wrote the file,
and a SHA-256 checksum over embeddings and header that is verified on load. A header whose
params this version does not know exactly is refused, as one from another version.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np

from .errors import SpeakertagError, check_format, first_line
from .io_utils import atomic_write_bytes, file_kind
from .params import FORMAT_VERSION, OLDEST_READABLE_FORMAT, Params, ParamsMismatch, ParamsOutOfRange, speakertag_version

MEMORY_FILE = "memory.npz"
HNSW_MIN_ENTRIES = 50_000  # from this size on, search an approximate HNSW index
# Target plus negative windows in one memory. 2 million is about 280 hours of target speech
# (two entries per 0.5 s), 1 GB of float32 at 128 dimensions and about 2.6 GB more once
# indexed: beyond that, loading it (once per --jobs worker) would exhaust a typical machine.
MAX_MEMORY_ENTRIES = 2_000_000
MAX_EMBEDDING_DIM = 4096  # wider rows are a damaged or crafted file, refused before they are read


@dataclass(frozen=True)
class Memory:
    embeddings: np.ndarray  # (n_entries, embedding_dim) float32, unit rows: the target
    negatives: np.ndarray  # (n_negatives, embedding_dim) float32, unit rows: other sounds
    params: Params
    model_fingerprint: str
    threshold: float
    name: str = "target"
    info: dict = field(default_factory=dict)  # calibration figures, sources: JSON-able
    edge_threshold: float | None = None  # windows scoring this much may widen a segment; None: no edge refinement
    speakertag_version: str = ""  # of the speakertag that wrote the file ("" until saved)

    def header(self) -> dict:
        return {
            "format": "speakertag-memory",
            "format_version": FORMAT_VERSION,
            "params": self.params.to_dict(),
            "model_fingerprint": self.model_fingerprint,
            "threshold": self.threshold,
            "edge_threshold": self.edge_threshold,
            "name": self.name,
            "info": self.info,
            "n_entries": int(len(self.embeddings)),
            "n_negatives": int(len(self.negatives)),
            "speakertag_version": self.speakertag_version,
        }


def _checksum(embeddings: np.ndarray, negatives: np.ndarray, header: dict) -> str:
    h = hashlib.sha256()
    for a in (embeddings, negatives):
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    h.update(json.dumps(header, sort_keys=True).encode())
    return h.hexdigest()


def check_entries(n_entries: int, what: str) -> None:
    """Refuse a memory of more than MAX_MEMORY_ENTRIES entries; `what` starts the message."""
    if n_entries > MAX_MEMORY_ENTRIES:
        raise SpeakertagError(f"{what} {n_entries} entries, more than the limit of {MAX_MEMORY_ENTRIES}; "
                              "use fewer or shorter clips, or merge fewer memories")


def save_memory(memory: Memory, path: str | Path) -> Path:
    """Write the memory atomically to `path` (a file, or a folder to hold memory.npz); its
    header records this speakertag's version."""
    check_entries(len(memory.embeddings) + len(memory.negatives), "memory would hold")
    path = Path(path)
    if path.is_dir():
        path = path / MEMORY_FILE
    header = replace(memory, speakertag_version=speakertag_version()).header()
    header["checksum"] = _checksum(memory.embeddings, memory.negatives, header)
    buf = io.BytesIO()
    np.savez(buf, embeddings=memory.embeddings.astype(np.float32), negatives=memory.negatives.astype(np.float32),
             header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
    atomic_write_bytes(path, buf.getvalue())
    return path


def memory_file(path: str | Path) -> Path:
    """The memory file that `path` names: itself, or a model folder's memory.npz."""
    path = Path(path)
    return path / MEMORY_FILE if path.is_dir() else path


def load_memory(path: str | Path) -> Memory:
    """Read a memory file (or a model folder's memory.npz); verifies version and checksum."""
    file = memory_file(path)
    if not file.exists():
        raise SpeakertagError(f"no memory at {path}: {file.name} is missing")
    if not file.is_file():
        raise SpeakertagError(f"not a valid speakertag memory file: {file} (it is {file_kind(file)})")
    if not zipfile.is_zipfile(file):
        raise SpeakertagError(f"not a valid speakertag memory file: {file} (not a NumPy .npz archive)")
    try:
        with np.load(file, allow_pickle=False) as z:
            # The sizes first, from the arrays' headers: a huge memory is refused before it is read.
            shapes = [_stored_shape(z, key) for key in ("embeddings", "negatives")]
            if any(len(s) != 2 or not 0 < s[1] <= MAX_EMBEDDING_DIM for s in shapes):
                raise SpeakertagError(f"memory {file} is damaged: embeddings of shapes {shapes[0]} and {shapes[1]}")
            check_entries(sum(s[0] for s in shapes), f"memory {file} holds")
            embeddings, negatives = z["embeddings"], z["negatives"]
            header = json.loads(z["header"].tobytes().decode())
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        # numpy's own words would invite an unsafe load ("allow_pickle=True"): say what it is instead
        why = "it holds pickled objects, which speakertag never loads" if "pickle" in str(e) else "damaged or incomplete"
        raise SpeakertagError(f"not a valid speakertag memory file: {file} ({why})") from None
    version = check_format(header, "memory", file, FORMAT_VERSION, OLDEST_READABLE_FORMAT)
    stored = header.pop("checksum", None)
    if stored != _checksum(embeddings, negatives, header):
        raise SpeakertagError(f"memory {file} failed its checksum: its contents were changed or damaged")
    try:
        params = Params.from_dict(header["params"], version)
    except ParamsMismatch as e:
        raise SpeakertagError(f"memory {file} was made by another version of speakertag "
                              f"(format {FORMAT_VERSION}): {first_line(e)}") from None
    except ParamsOutOfRange as e:
        raise SpeakertagError(f"memory {file} is damaged: {first_line(e)}") from None
    except KeyError:
        raise SpeakertagError(f"memory {file} is damaged: no params") from None
    try:
        memory = Memory(embeddings.astype(np.float32), negatives.astype(np.float32), params, header["model_fingerprint"],
                        float(header["threshold"]), header.get("name", "target"), header.get("info", {}),
                        None if header.get("edge_threshold") is None else float(header["edge_threshold"]),
                        str(header["speakertag_version"]))
    except (KeyError, ValueError, TypeError) as e:
        raise SpeakertagError(f"memory {file} is damaged: {e}") from None
    for a in (embeddings, negatives):
        if a.ndim != 2 or a.shape[1] != params.encoder.embedding_dim:
            raise SpeakertagError(f"memory {file} is damaged: embeddings of shape {a.shape}")
        if not np.isfinite(a).all():
            raise SpeakertagError(f"memory {file} is damaged: its embeddings hold NaN or infinite values")
    if not len(embeddings):
        raise SpeakertagError(f"memory {file} is damaged: it holds no embeddings of the target")
    if not np.isfinite(memory.threshold) or (memory.edge_threshold is not None and not np.isfinite(memory.edge_threshold)):
        raise SpeakertagError(f"memory {file} is damaged: its threshold is {memory.threshold}")
    return memory


def _stored_shape(z, key: str) -> tuple[int, ...]:
    """The shape of array `key` of an open .npz, read from its .npy header without loading it."""
    with z.zip.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version != (1, 0) and version != (2, 0):
            raise ValueError(f"{key} has .npy format version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
    if dtype.hasobject:
        raise ValueError(f"{key} holds pickled objects")
    return tuple(shape)


def _join_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a's rows, then those of b's rows that are not already there (exact copies added once)."""
    rows = np.concatenate([a, b])
    if not len(rows):
        return rows
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    keep = first[inverse.reshape(-1)] == np.arange(len(rows))  # the first row of each value
    keep[:len(a)] = True  # a stays as it is
    return rows[keep]


def merge_memories(a: Memory, b: Memory) -> Memory:
    """Join two memories of the same model; keeps a's threshold and name. An entry of b
    that a already holds (merging a memory with itself, or twice) is not added again."""
    if a.model_fingerprint != b.model_fingerprint or a.params != b.params:
        raise SpeakertagError("cannot merge memories of different models "
                              f"(fingerprints {a.model_fingerprint} and {b.model_fingerprint})")
    embeddings, negatives = _join_rows(a.embeddings, b.embeddings), _join_rows(a.negatives, b.negatives)
    check_entries(len(embeddings) + len(negatives), "the merged memory would hold")
    info = {**a.info, "merged_from": [a.info.get("source", a.name), b.info.get("source", b.name)]}
    return replace(a, embeddings=embeddings, negatives=negatives, info=info)


def build_index(embeddings: np.ndarray) -> faiss.Index:
    """Inner-product index (cosine on unit vectors); HNSW from HNSW_MIN_ENTRIES entries on."""
    dim = embeddings.shape[1]
    if len(embeddings) >= HNSW_MIN_ENTRIES:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 128  # faiss's default 40 misses whole clusters
        index.hnsw.efSearch = 256
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return index



def describe(m: Memory, path: str | Path) -> str:
    """What memory `m` (read from `path`) holds, in lines for people (`memory inspect`)."""
    calib = m.info.get("calibration", {})
    lines = [f"memory       {path}", f"voice        {m.name}",
             f"entries      {len(m.embeddings)} target + {len(m.negatives)} negative windows, "
             f"{m.embeddings.shape[1]} dims",
             f"model        {m.model_fingerprint}", f"made by      speakertag {m.speakertag_version}"]
    line = f"threshold    {m.threshold:.4f}"
    if calib:
        share = f" for a target speaking {calib['target_share']:.0%} of the time" if "target_share" in calib else ""
        line += (f" ({calib['rule']}{share}: precision {calib['precision']:.2f}, recall {calib['recall']:.2f}"
                 " on calibration windows)")
    lines.append(line)
    if m.edge_threshold is not None:
        lines.append(f"edges        segments widen over windows scoring {m.edge_threshold:.4f} or more "
                     f"(the target's lower quartile)")
    a = m.params.audio
    lines.append(f"front end    {a.sample_rate_hz} Hz, {a.n_mels} mels, windows {a.window_s:.2f} s every {a.hop_s:.2f} s")
    clips = m.info.get("positive_clips", [])
    if clips:
        lines.append(f"clips        {len(clips)}: " + ", ".join(Path(c).name for c in clips[:5])
                     + (" ..." if len(clips) > 5 else ""))
    return "\n".join(lines)
