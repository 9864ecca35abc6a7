"""Many films: one output name per input, and tagging in parallel processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from .errors import SpeakertagError
from .tagging import TagResult, Voice, check_pair, load_voice, tag


@dataclass(frozen=True)
class VoiceSpec:
    """How to load the voices to tag with, options applied; small and picklable, for worker processes."""
    model_dirs: tuple[Path, ...]  # model folders, or folders of model folders
    memory_file: Path | None = None  # a memory to use instead of the model folder's (one model only)
    device: str | None = None
    min_gap_s: float | None = None  # None: each model's own tag params
    min_duration_s: float | None = None

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
                         min_duration_s=tp.min_duration_s if self.min_duration_s is None else self.min_duration_s)
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


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_worker: dict = {}  # in a worker process: its voices, loaded once by _init_worker


def _init_worker(spec: VoiceSpec, n_threads: int) -> None:
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops workers
    torch.set_num_threads(n_threads)
    _worker["voices"] = spec.load()


def _work(film: Path, threshold: float | None, stream: int | None) -> TagResult:
    return tag(film, _worker["voices"], threshold, stream)


def tag_in_pool(films: list[Path], n_workers: int, spec: VoiceSpec, threshold: float | None, stream: int | None,
                done: Callable[[Path, TagResult | BaseException], None]) -> None:
    """Tag films in n_workers spawned processes (spawn: safe with CUDA and threads), each
    loading the voices once and using its share of the CPU cores. done(film, TagResult or
    exception) is called in this process as each film finishes."""
    pool = ProcessPoolExecutor(n_workers, multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(spec, max(1, cpu_count() // n_workers)))
    try:
        futures = {pool.submit(_work, film, threshold, stream): film for film in films}
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
