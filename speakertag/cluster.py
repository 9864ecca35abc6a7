"""Tag films on a Ray cluster: each film one Ray task, the voices shipped once.

Ray is an optional extra (`pip install 'speakertag[ray]'`) and is imported only inside the
functions here. The worker machines need speakertag installed and the films at the same
paths (a shared filesystem); they need no model folder: the model and memory files travel
as bytes through Ray's object store, put there once per run. Results come back to this
process, which writes every output as it does the local engine's (batch.tag_films).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from .errors import SpeakertagError, first_line
from .tagging import TagOptions, TagResult, Voice, VoiceSpec, tag, voice_files

WAIT_S = 0.2  # how often the driver looks for finished films and for Ctrl-C
CONNECT_S = 10.0  # a cluster's head that does not answer in this long is taken for absent
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # and an empty SETTINGS
INSTALL_HINT = "--engine ray needs Ray, which is not installed here: pip install 'speakertag[ray]'"


def import_ray():
    """The ray module, or a SpeakertagError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SpeakertagError(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class ShippedVoices:
    """The voices' model and memory files as bytes, to load them where the folders are not."""
    folders: tuple[tuple[str, bytes, bytes], ...]  # (model folder, model.pt bytes, memory bytes)
    spec: VoiceSpec  # its device; its paths are not used where the voices are loaded

    @classmethod
    def read(cls, spec: VoiceSpec) -> ShippedVoices:
        return cls(tuple((str(d), m.read_bytes(), mem.read_bytes()) for d, m, mem in voice_files(spec)), spec)

    @property
    def key(self) -> str:
        """SHA-256 of the files, their folders' names and the device: which voices a worker has loaded."""
        h = hashlib.sha256(repr(replace(self.spec, model_dirs=(), memory_file=None)).encode())
        for folder, model, memory in self.folders:
            for part in (Path(folder).name.encode(), model, memory):
                h.update(len(part).to_bytes(8, "little"))
                h.update(part)
        return h.hexdigest()

    def load(self) -> list[Voice]:
        """Write the files to a temporary folder and load them as VoiceSpec.load does (folder
        names kept: voices of the same name are labelled by folder; each voice's folder is
        the one it was read from)."""
        from .memory import MEMORY_FILE
        from .model import MODEL_FILE

        with tempfile.TemporaryDirectory(prefix="speakertag-voices-") as tmp:
            dirs = []
            for i, (folder, model, memory) in enumerate(self.folders):
                d = Path(tmp) / str(i) / Path(folder).name
                d.mkdir(parents=True)
                (d / MODEL_FILE).write_bytes(model)
                (d / MEMORY_FILE).write_bytes(memory)
                dirs.append(d)
            voices = replace(self.spec, model_dirs=tuple(dirs), memory_file=None).load()
            return [replace(v, folder=Path(folder)) for v, (folder, _, _) in zip(voices, self.folders)]


_worker_voices: dict[str, list[Voice]] = {}  # in a Ray worker process: the voices of the last run, by key


def _tag_task(key: str, shipped: list, film: Path, options: TagOptions) -> TagResult:
    """One film, in a Ray worker. `shipped` is [ObjectRef of ShippedVoices], in a list so that
    Ray does not fetch it for every film: a worker loads the voices on its first film only."""
    import ray
    import torch

    if key not in _worker_voices:
        _worker_voices.clear()
        _worker_voices[key] = ray.get(shipped[0]).load()
        torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    try:
        return tag(film, _worker_voices[key], options)
    except (SpeakertagError, OSError):
        raise
    except Exception as e:  # noqa: BLE001 - sent back as one line: any other exception may not unpickle
        raise SpeakertagError(f"internal error: {type(e).__name__}: {first_line(e)}") from None


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Connected to Ray inside the block: address None starts Ray on this machine, "auto"
    joins the cluster this machine belongs to, "ray://host:port" goes through Ray Client.
    A process already connected stays connected, to the same cluster, and is left so."""
    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    check_reachable(address)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # log_to_driver off: the workers' logs stay in Ray's log files, our stderr has one line per film
        with _stderr_hidden() if address and "://" not in address else contextlib.nullcontext():
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as e:  # noqa: BLE001 - ConnectionError, ValueError, RuntimeError...: one line
        for inner in (e.__cause__, e.__context__):
            if inner is not None and not isinstance(inner, Exception):  # Ctrl-C while Ray starts
                raise inner from None
        where = f" at {address}" if address else ""
        raise SpeakertagError(f"cannot start or reach Ray{where}: {first_line(e, 200)}") from None
    if threading.current_thread() is threading.main_thread():
        for s, handler in handlers.items():  # ray.init's own SIGTERM handler aborts the process
            if handler is not None:
                signal.signal(s, handler)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _stderr_hidden() -> Iterator[None]:
    """Standard error (the file descriptor, for C++ too) into a discarded file inside: joining
    a cluster, Ray's core prints each retry there, where the one-line error should be alone."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def check_reachable(address: str | None, timeout_s: float = CONNECT_S) -> None:
    """A cluster address HOST:PORT where nothing answers fails here, within timeout_s, in one
    line (SpeakertagError): ray.init would retry for minutes and print its own log lines.
    Other addresses (None, "auto", ray://...) are left to ray.init, which fails fast on them."""
    if not address or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return
    hint = "start one with `ray start --head`, or give its address"
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    except OSError as e:
        raise SpeakertagError(f"cannot reach Ray at {address}: {e.strerror or e or 'timed out'} (no Ray cluster's "
                              f"head answers there: {hint})") from None
    with conn:
        if os.environ.get("RAY_USE_TLS", "0") not in ("", "0"):  # with TLS the head answers only a TLS client
            return
        answer = b""
        with contextlib.suppress(OSError):  # a peer that hangs up is not a head either
            conn.sendall(HTTP2_PREFACE)
            while len(answer) < 9 and (more := conn.recv(9 - len(answer))):
                answer += more
        if len(answer) < 9 or answer[3] != 4:  # a head speaks gRPC: HTTP/2 answers with SETTINGS
            raise SpeakertagError(f"cannot reach Ray at {address}: something answers there, but not a "
                                  f"Ray cluster's head; {hint}")


def _failure(ray, e: Exception) -> BaseException:
    """The exception a film's task ended with, as the local engine would have raised it."""
    if isinstance(e, ray.exceptions.RayTaskError) and isinstance(e.cause, Exception):
        return e.cause
    return SpeakertagError(f"Ray: {type(e).__name__}: {first_line(e)}")


def tag_on_ray(films: list[Path], spec: VoiceSpec, options: TagOptions = TagOptions(),
               address: str | None = None) -> Iterator[tuple[Path, TagResult | BaseException]]:
    """Tag each film as a Ray task taking one CPU, and one GPU with spec.device "cuda" (Ray
    hides the GPUs from tasks that ask for none: "auto" runs on the CPU). Yields (film,
    TagResult or exception) in this process as each film finishes. address: as for
    ray_session(), used when this process is not connected yet. Interrupted (Ctrl-C,
    SIGTERM, also while the caller handles a film) or closed early: the tasks still queued
    or running are cancelled."""
    ray = import_ray()
    shipped = ShippedVoices.read(spec)
    with ray_session(address), _signals_noted() as signals:
        n_gpus = 1 if spec.device == "cuda" else 0
        if n_gpus and not ray.cluster_resources().get("GPU"):  # its tasks would wait forever
            raise SpeakertagError("--device cuda asked for, but the Ray cluster has no GPU")
        shipped_ref = ray.put(shipped)  # once: every task gets a reference, each worker fetches it once
        task = ray.remote(num_cpus=1, num_gpus=n_gpus)(_tag_task)
        pending = {task.remote(shipped.key, [shipped_ref], film, options): film for film in films}
        try:
            while pending and not signals:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                for ref in ready:
                    film = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - one film's failure, reported by the caller
                        result = _failure(ray, e)
                    yield film, result
            if signals:
                raise KeyboardInterrupt
        except BaseException:
            for ref in pending:
                with contextlib.suppress(Exception):  # finished or gone meanwhile
                    ray.cancel(ref, force=True)
            raise


@contextlib.contextmanager
def _signals_noted() -> Iterator[list[int]]:
    """Inside the block Ctrl-C and SIGTERM are only noted in the list yielded: raised inside
    Ray's wait, KeyboardInterrupt comes out as a SystemError. Outside the main thread, where
    signals cannot be handled, the list stays empty."""
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    before = {s: signal.signal(s, lambda signum, frame: noted.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield noted
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
