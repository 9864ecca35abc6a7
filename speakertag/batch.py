"""Many films: one output name per input, the skip rule for restarts, and tagging in
parallel processes. The Ray engine (cluster.py) shares the names and the skip rule."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from .errors import SpeakertagError
from .io_utils import atomic_write_text
from .tagging import TagResult, Voice, check_pair, cpu_count, load_voice, tag


@dataclass(frozen=True)
class VoiceSpec:
    """How to load the voices to tag with, options applied; small and picklable, for worker processes."""
    model_dirs: tuple[Path, ...]  # model folders, or folders of model folders
    memory_file: Path | None = None  # a memory to use instead of the model folder's (one model only)
    device: str | None = None
    min_gap_s: float | None = None  # None: each model's own tag params
    min_duration_s: float | None = None
    edge_db: float | None = None
    exclusive: bool = False  # each moment to at most one voice (tagging.exclusive), applied to each result

    def load(self) -> list[Voice]:
        from .memory import load_memory

        dirs = model_folders(self.model_dirs)
        if self.memory_file and len(dirs) > 1:
            raise SpeakertagError("--memory needs exactly one model")
        voices = []
        for d in dirs:
            voice = load_voice(d, self.device)
            if self.memory_file:
                voice = replace(voice, memory=load_memory(self.memory_file))
                check_pair(voice.model, voice.memory)
            tp = voice.params
            tp = replace(tp, min_gap_s=tp.min_gap_s if self.min_gap_s is None else self.min_gap_s,
                         min_duration_s=tp.min_duration_s if self.min_duration_s is None else self.min_duration_s,
                         edge_db=tp.edge_db if self.edge_db is None else self.edge_db)
            voices.append(replace(voice, tag_params=tp))
        names = [v.name for v in voices]
        if len(set(names)) < len(names):  # voices trained under the same name: label them by folder
            voices = [replace(v, label=d.name) for v, d in zip(voices, dirs)]
        return voices


def model_folders(paths: Sequence[Path]) -> list[Path]:
    """Model folders (holding model.pt) named directly or found one level inside the given folders."""
    found: list[Path] = []
    for p in paths:
        if not p.is_dir():
            raise SpeakertagError(f"no such model folder: {p}")
        inner = [] if (p / "model.pt").exists() else sorted(d for d in p.iterdir() if (d / "model.pt").is_file())
        found.extend(inner or [p])  # a folder without models fails in load_model with its own message
    return found


def output_paths(inputs: list[Path], out_dir: Path, suffix: str) -> list[Path]:
    """One output per input, named after its stem; a stem seen before gets -2, -3, ... in input order."""
    taken, paths = set(), []
    for f in inputs:
        name, n = f.stem, 1
        while name.casefold() in taken:  # casefold: distinct names also on case-insensitive disks
            n += 1
            name = f"{f.stem}-{n}"
        taken.add(name.casefold())
        paths.append(out_dir / f"{name}{suffix}")
    return paths


STAMP_FOLDER = ".speakertag"  # in an --out-dir: one stamp per output, saying what made it
STAMP_FORMAT_VERSION = 1


def _sha256_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def voice_files(spec: VoiceSpec) -> list[tuple[Path, Path, Path]]:
    """(model folder, model file, memory file) of each voice, in the order spec.load() gives them."""
    from .memory import MEMORY_FILE
    from .model import MODEL_FILE

    return [(d, d / MODEL_FILE, spec.memory_file or d / MEMORY_FILE) for d in model_folders(spec.model_dirs)]


def run_settings(spec: VoiceSpec, fmt: str, threshold: float | None, stream: int | None,
                 channels: str = "auto") -> dict:
    """Everything besides the film that decides an output's contents: the model and memory
    files (by SHA-256 of their bytes), the options, the format and speakertag's version.
    JSON-able; two runs with equal settings write the same output for the same film."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        made_by = version("speakertag")
    except PackageNotFoundError:  # run from a source tree
        made_by = ""
    return {
        "speakertag": made_by,
        "format": fmt,
        "threshold": threshold,
        "stream": stream,
        "channels": channels,
        "min_gap_s": spec.min_gap_s,
        "min_duration_s": spec.min_duration_s,
        "edge_db": spec.edge_db,
        **({"exclusive": True} if spec.exclusive else {}),  # absent when off: older stamps stay valid
        "voices": [{"folder": str(d), "model_sha256": _sha256_of_file(m), "memory_sha256": _sha256_of_file(mem)}
                   for d, m, mem in voice_files(spec)],
    }


def film_state(film: Path) -> dict:
    """The film as named, with its size and modification time: a changed film is tagged again."""
    st = film.stat()
    return {"path": str(film), "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def stamp_path(out: Path) -> Path:
    """OUT_DIR/.speakertag/NAME.stamp for the output OUT_DIR/NAME."""
    return out.parent / STAMP_FOLDER / f"{out.name}.stamp"


def write_stamp(out: Path, film: dict, settings: dict, text: str) -> None:
    """Record what made `out` (just written with `text`): film_state() taken before tagging,
    run_settings(), and the output's SHA-256."""
    stamp = {"format": "speakertag-stamp", "format_version": STAMP_FORMAT_VERSION, "film": film,
             "settings": settings, "output_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    stamp_path(out).parent.mkdir(exist_ok=True)
    atomic_write_text(stamp_path(out), json.dumps(stamp, indent=1) + "\n")


def is_up_to_date(out: Path, film: dict, settings: dict) -> bool:
    """True when `out` exists, unchanged since it was written, and its stamp records this
    film (same path, size and modification time) and these settings."""
    try:
        stamp = json.loads(stamp_path(out).read_text(encoding="utf-8"))
        output_sha256 = _sha256_of_file(out)
    except (OSError, ValueError):  # no stamp or no output (or unreadable): tag it
        return False
    return (isinstance(stamp, dict) and stamp.get("format") == "speakertag-stamp"
            and stamp.get("format_version") == STAMP_FORMAT_VERSION
            and stamp.get("film") == film
            and stamp.get("settings") == json.loads(json.dumps(settings))  # as JSON reads it back
            and stamp.get("output_sha256") == output_sha256)


_worker: dict = {}  # in a worker process: its voices, loaded once by _init_worker


def _init_worker(spec: VoiceSpec, n_threads: int) -> None:
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops workers
    torch.set_num_threads(n_threads)
    _worker["voices"] = spec.load()


def _work(film: Path, threshold: float | None, stream: int | None, channels: str) -> TagResult:
    return tag(film, _worker["voices"], threshold, stream, channels=channels)


def tag_in_pool(films: list[Path], n_workers: int, spec: VoiceSpec, threshold: float | None, stream: int | None,
                done: Callable[[Path, TagResult | BaseException], None], channels: str = "auto") -> None:
    """Tag films in n_workers spawned processes (spawn: safe with CUDA and threads), each
    loading the voices once and using its share of the CPU cores. done(film, TagResult or
    exception) is called in this process as each film finishes."""
    pool = ProcessPoolExecutor(n_workers, multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(spec, max(1, cpu_count() // n_workers)))
    try:
        futures = {pool.submit(_work, film, threshold, stream, channels): film for film in films}
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as e:  # noqa: BLE001 - one file's failure, reported by done()
                result = e
            done(futures[future], result)
    except BaseException:
        # Interrupted: don't wait for films in progress (Python 3.11 has no terminate_workers()).
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        raise
    pool.shutdown()
