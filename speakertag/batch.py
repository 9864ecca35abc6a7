"""Many films: one output name per input, the skip rule for restarts, and tagging in
parallel processes. tag_films() plans and runs a batch (any engine) and writes its outputs;
the Ray engine (cluster.py) shares the names and the skip rule."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

from . import writers
from .errors import error_message
from .io_utils import atomic_write_text, check_outputs, folder_lock
from .signals import die_with_parent
from .tagging import TagOptions, TagResult, Voice, VoiceSpec, cpu_count, tag, voice_files


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


def run_settings(spec: VoiceSpec, fmt: str, options: TagOptions = TagOptions()) -> dict:
    """Everything besides the film that decides an output's contents: the model and memory
    files (by SHA-256 of their bytes), the options, the format and speakertag's version.
    JSON-able; two runs with equal settings write the same output for the same film."""
    from .params import speakertag_version

    return {
        "speakertag": speakertag_version(missing=""),
        "format": fmt,
        "threshold": options.threshold,
        "stream": options.stream,
        "channels": options.channels,
        "min_gap_s": options.min_gap_s,
        "min_duration_s": options.min_duration_s,
        "edge_db": options.edge_db,
        **({"exclusive": True} if options.exclusive else {}),  # absent when off: older stamps stay valid
        **({"short_edges": options.short_edges} if options.short_edges is not None else {}),
        "voices": [{"folder": str(d), "model_sha256": _sha256_of_file(m), "memory_sha256": _sha256_of_file(mem)}
                   for d, m, mem in voice_files(spec)],
    }


def voice_inputs(spec: VoiceSpec) -> list[Path]:
    """The model and memory files the voices of `spec` are loaded from."""
    return [f for _, model, memory in voice_files(spec) for f in (model, memory)]


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


# What one worker process holds (torch, the voices, a film's blocks in flight), for --jobs'
# memory cap: rounded up, so that the cap errs towards fewer workers.
WORKER_MEMORY_BYTES = 800 * 2**20


def available_memory_bytes() -> int | None:
    """Memory that new processes can have without swapping: Linux's MemAvailable, less where
    a cgroup (a container) allows less; None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as fh:
            found += [int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, min(found)) if found else None


def usable_jobs(jobs: int, n_cores: int | None = None, memory_bytes: int | None = -1) -> tuple[int, str | None]:
    """`jobs` lowered to the CPU cores and to the workers the available memory holds (at
    least 1), and a note saying why when it was lowered (else None). n_cores and
    memory_bytes default to this machine's (memory_bytes None: not known, no cap)."""
    n_cores = cpu_count() if n_cores is None else n_cores
    memory_bytes = available_memory_bytes() if memory_bytes == -1 else memory_bytes
    by_memory = jobs if memory_bytes is None else max(1, memory_bytes // WORKER_MEMORY_BYTES)
    n = max(1, min(jobs, n_cores, by_memory))
    if n == jobs:
        return n, None
    why = (f"this machine has {n_cores} CPU core{'s' if n_cores > 1 else ''}" if n == n_cores else
           f"{memory_bytes / 1e9:.1f} GB of memory available, a worker needs about "
           f"{WORKER_MEMORY_BYTES / 1e9:.1f} GB")
    return n, f"--jobs {jobs} lowered to {n}: {why}"


_worker: dict = {}  # in a worker process: its voices, loaded once by _init_worker


def _init_worker(spec: VoiceSpec, n_threads: int, parent_pid: int) -> None:
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops workers
    die_with_parent(parent_pid)  # a parent killed outright leaves no worker behind
    torch.set_num_threads(n_threads)
    _worker["voices"] = spec.load()


def _work(film: Path, options: TagOptions) -> TagResult:
    return tag(film, _worker["voices"], options)


def tag_in_pool(films: list[Path], n_workers: int, spec: VoiceSpec, options: TagOptions = TagOptions()
                ) -> Iterator[tuple[Path, TagResult | BaseException]]:
    """Tag films in n_workers spawned processes (spawn: safe with CUDA and threads), each
    loading the voices once and using its share of the CPU cores. Yields (film, TagResult or
    exception) as each film finishes; interrupted or closed early, the workers are stopped."""
    pool = ProcessPoolExecutor(n_workers, multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(spec, max(1, cpu_count() // n_workers), os.getpid()))
    try:
        futures = {pool.submit(_work, film, options): film for film in films}
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as e:  # noqa: BLE001 - one file's failure, reported by the caller
                result = e
            yield futures[future], result
    except BaseException:
        _stop_pool(pool)
        raise
    pool.shutdown()


def _stop_pool(pool: ProcessPoolExecutor, grace_s: float = 2.0) -> None:
    """Interrupted or closed early: the workers stopped now, not after their films (Python
    3.11 has no terminate_workers()). Their list is taken first: shutdown() drops it."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(OSError, ValueError):
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace_s
    for process in processes:  # SIGTERM ends a worker at once; one that lingers is killed
        with contextlib.suppress(OSError, ValueError, AssertionError):
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(grace_s)


def render_output(fmt: str, film: Path, result: TagResult) -> str:
    """The output file of one tagged film, naming each voice's model folder and threshold."""
    voices = writers.voice_entries((t.name, t.folder, t.threshold) for t in result.tracks)
    return writers.render(fmt, result.segments, input_path=str(film), voices=voices, gaps=result.gaps)


@dataclass(frozen=True)
class Outcome:
    """What became of one input of tag_films()."""
    film: Path  # the input file as found; for a folder that could not be listed: that folder
    out_path: Path | None  # its output in out_dir; None for a folder that could not be listed
    result: TagResult | None = None  # tagged and written
    error: BaseException | None = None  # failed, nothing written for it (a folder: the OSError from listing it)
    skipped: bool = False  # its output is up to date: not tagged again

    @property
    def unreadable_folder(self) -> bool:
        return self.out_path is None

    def lines(self, quiet: bool = False) -> list[str]:
        """What to say of this input, a line each: its error, or the note of its tagging;
        unless quiet, also that it was skipped or written."""
        if self.unreadable_folder:
            why = self.error.strerror or self.error
            return [f"speakertag: error: {self.error.filename}: cannot read folder ({why})"]
        if self.error is not None:
            return [f"speakertag: error: {self.film}: {error_message(self.error)}"]
        if self.skipped:
            return [] if quiet else [f"{self.film}: skipped, {self.out_path} is up to date"]
        done = [] if quiet else [f"{self.film}: {len(self.result.segments)} segments written to {self.out_path}"]
        return ([self.result.note] if self.result.note else []) + done


@dataclass
class Tally:
    """The outcomes of a tag_films() run counted as they come (add), for its last line."""
    n_inputs: int = 0
    n_skipped: int = 0
    n_failed: int = 0
    unreadable: list[OSError] = field(default_factory=list)  # folders that could not be listed

    def add(self, o: Outcome) -> None:
        if o.unreadable_folder:
            self.unreadable.append(o.error)
            return
        self.n_inputs += 1
        self.n_skipped += o.skipped
        self.n_failed += o.error is not None

    @property
    def failed(self) -> bool:
        """Whether a film failed or a folder could not be read (the command's exit code 1)."""
        return bool(self.n_failed or self.unreadable)

    def summary(self) -> str:
        """"tagged 11 of 12 files (1 up to date, 1 failed)", and the folders that could not be read."""
        notes = [f"{self.n_skipped} up to date"] if self.n_skipped else []
        if self.n_failed:
            notes.append(f"{self.n_failed} failed")
        if self.unreadable:
            notes.append(f"{len(self.unreadable)} folder{'s' if len(self.unreadable) > 1 else ''} could not be read: "
                         + ", ".join(str(e.filename) for e in self.unreadable))
        return (f"tagged {self.n_inputs - self.n_skipped - self.n_failed} of {self.n_inputs} files"
                + (f" ({', '.join(notes)})" if notes else ""))


def tag_films(films: Sequence[Path], out_dir: Path, fmt: str, spec: VoiceSpec, options: TagOptions = TagOptions(),
              jobs: int = 1, engine: str = "local",
              ray_address: str | None = None, force: bool = False,
              tag_one: Callable[[Path, list[Voice]], TagResult] | None = None,
              note: Callable[[str], None] | None = None) -> Iterator[Outcome]:
    """Files and folders (searched recursively) to one output each in out_dir, each file once
    however often it was named. Yields, in this order: the folders that could not be listed,
    the films skipped because their output is up to date (its stamp records the same film and
    settings; none with `force`), then each other film as it finishes, its output and stamp
    written. A film that fails yields its error and the others go on. What fails for all (a
    missing input, an output that would overwrite an input, out_dir in use by another run,
    a model that does not load, Ray not installed) raises before any film is tagged.
    out_dir is locked while the iterator runs (io_utils.folder_lock) and left out if nothing
    was written into it.

    engine "local" tags in this process, or in `jobs` processes (tag_in_pool); "ray" on a Ray
    cluster (cluster.tag_on_ray, at ray_address). tag_one(film, voices): how this process
    tags one film (default tagging.tag; the CLI adds a progress bar). `jobs` is lowered to
    the CPU cores and the memory available (usable_jobs), and note(text) told so.
    Close the iterator when leaving it early: the workers and Ray tasks are stopped."""
    from .audio import find_media_files
    from .model import resolve_device

    if engine == "ray":
        from .cluster import import_ray, tag_on_ray

        import_ray()  # not installed: say so before anything else
    unique: dict[Path, Path] = {}  # each file once, however often it was named
    unreadable: list[OSError] = []  # folders that could not be listed: named, and the others go on
    for f in find_media_files(list(films), unreadable):
        unique.setdefault(f.resolve(), f)
    inputs = list(unique.values())
    out_for = dict(zip(inputs, output_paths(inputs, out_dir, writers.SUFFIX[fmt])))
    check_outputs(out_for.values(), [*inputs, *voice_inputs(spec)])
    with folder_lock(out_dir):  # a second run on out_dir meanwhile is refused, not mixed in
        for e in unreadable:
            yield Outcome(Path(e.filename), None, error=e)
        n_workers = min(jobs, len(inputs))
        voices: list[Voice] = []
        if engine == "ray" or n_workers > 1:  # workers load the model; a bad model fails once, here
            if engine == "local":
                resolve_device(spec.device)
            replace(spec, device="cpu").load()
        else:
            voices = spec.load()
        settings = run_settings(spec, fmt, options)
        state: dict[Path, dict | None] = {}  # taken before tagging: a film changed meanwhile is tagged next time
        for film in inputs:
            try:
                state[film] = film_state(film)
            except OSError:
                state[film] = None  # tagging it reports the problem
        todo = [f for f in inputs if force or state[f] is None or not is_up_to_date(out_for[f], state[f], settings)]
        for film in inputs:
            if film not in todo:
                yield Outcome(film, out_for[film], skipped=True)

        if engine == "ray" and todo:
            results = tag_on_ray(todo, spec, options, ray_address)
        elif n_workers > 1 and todo:
            usable, lowered = usable_jobs(jobs)
            if lowered and note and usable < min(jobs, len(todo)):
                note(lowered)
            results = tag_in_pool(todo, min(usable, len(todo)), spec, options)
        else:
            results = _tag_here(todo, voices, tag_one or (lambda film, voices: tag(film, voices, options)))
        with contextlib.closing(results):
            for film, result in results:
                try:
                    if isinstance(result, BaseException):
                        raise result
                    text = render_output(fmt, film, result)
                    atomic_write_text(out_for[film], text)
                    if state[film] is not None:
                        write_stamp(out_for[film], state[film], settings, text)
                except Exception as e:  # noqa: BLE001 - one file's failure does not stop the batch
                    yield Outcome(film, out_for[film], error=e)
                    continue
                yield Outcome(film, out_for[film], result)


def _tag_here(films: list[Path], voices: list[Voice], tag_one: Callable[[Path, list[Voice]], TagResult]
              ) -> Iterator[tuple[Path, TagResult | BaseException]]:
    """The films one after the other in this process: (film, TagResult or exception)."""
    for film in films:
        try:
            result = tag_one(film, voices)
        except Exception as e:  # noqa: BLE001 - one file's failure, reported by the caller
            result = e
        yield film, result
