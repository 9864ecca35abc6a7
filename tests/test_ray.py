"""The Ray engine on a local Ray cluster that this module starts (2 CPUs, a 100 MB object
store): the same outputs as the local engine, one line per failed film, finished films
skipped on a rerun and redone with --force, Ctrl-C cancelling the films still to do."""

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import speech_like, write_audio

pytestmark = pytest.mark.slow  # a Ray cluster

ray = pytest.importorskip("ray", reason="the Ray engine's tests need Ray: pip install 'speakertag[ray]'")

RATE = 22050


@pytest.fixture(scope="module")
def ray_address():
    """Start a local Ray cluster, connect this process to it; yields its address. Afterwards
    the environment variables and signal handlers that ray.init sets are put back."""
    environ = dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    temp = tempfile.mkdtemp(prefix="st-ray-")  # short: Ray's socket paths must fit in 107 bytes
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a cluster of this process: no token written to ~/.ray
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False,
             logging_level=logging.ERROR, _temp_dir=temp)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        os.environ.clear()
        os.environ.update(environ)
        for s, handler in handlers.items():
            signal.signal(s, handler)


@pytest.fixture(scope="module")
def films(tmp_path_factory, example) -> Path:
    """Three films (two sharing a stem) and a silent one, which fails."""
    from speakertag.audio import load_audio

    d = tmp_path_factory.mktemp("films")
    # 30 s of the example film around a target segment (50.96-69.09 s)
    write_audio(d / "excerpt.wav", load_audio(example / "movie01.mp4", RATE)[45 * RATE:75 * RATE], RATE)
    write_audio(d / "speech.wav", speech_like(8.0, RATE), RATE)
    write_audio(d / "sub" / "speech.flac", speech_like(8.0, 16000, seed=1), 16000)
    write_audio(d / "silent.wav", np.zeros(5 * RATE, np.float32), RATE)
    return d


def run_here(capsys, *args) -> tuple[int, list[str]]:
    """The CLI in this process, which is connected to the test's cluster: exit code, stderr lines."""
    from speakertag.cli import main

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        for s, handler in handlers.items():  # main() installs its own
            signal.signal(s, handler)
    return code, capsys.readouterr().err.splitlines()


def files(folder: Path) -> dict[Path, tuple[bytes, int]]:
    """Every file under folder, stamps included: its bytes and modification time (ns)."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_ray_engine_like_local_and_restartable(tiny_model_dir, films, ray_address, tmp_path, capsys):
    out_ray, out_local = tmp_path / "ray", tmp_path / "local"
    common = ["tag", films, "--model", tiny_model_dir, "--format", "json"]
    silent = films / "silent.wav"
    error = f"speakertag: error: {silent}: {silent} is silent: its audio track holds only digital silence"
    outputs = {films / "excerpt.wav": "excerpt.json", films / "speech.wav": "speech.json",
               films / "sub" / "speech.flac": "speech-2.json"}

    # A second driver process joins the cluster by its address, as on a real cluster.
    r = subprocess.run([sys.executable, "-m", "speakertag", *map(str, common), "--out-dir", str(out_ray),
                        "--engine", "ray", "--ray-address", ray_address], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    *lines, summary = r.stderr.splitlines()
    assert summary == "tagged 3 of 4 files (1 failed)"
    assert error in lines and len(lines) == 4, r.stderr  # films in the order they finished
    for film, name in outputs.items():
        assert any(re.fullmatch(rf"{re.escape(str(film))}: \d+ segments written to {re.escape(str(out_ray / name))}",
                                line) for line in lines), r.stderr
    assert {p.name for p in out_ray.iterdir() if p.is_file()} == set(outputs.values())

    # The local engine writes the same files.
    code, lines = run_here(capsys, *common, "--out-dir", out_local, "-q")
    assert (code, lines) == (1, [error, "tagged 3 of 4 files (1 failed)"])
    for name in outputs.values():
        assert (out_ray / name).read_bytes() == (out_local / name).read_bytes(), name
    assert files(out_local / ".speakertag").keys() == {out_local / ".speakertag" / f"{n}.stamp" for n in outputs.values()}

    # Again: the finished films are skipped and their files untouched; the failed one is tried again.
    before = files(out_ray)
    code, lines = run_here(capsys, *common, "--out-dir", out_ray, "--engine", "ray")
    assert code == 1
    assert lines == [f"{film}: skipped, {out_ray / name} is up to date" for film, name in outputs.items()] + [
        error, "tagged 0 of 4 files (3 up to date, 1 failed)"]
    assert files(out_ray) == before

    # --force: every film again; the same outputs, written anew.
    code, lines = run_here(capsys, *common, "--out-dir", out_ray, "--engine", "ray", "--force", "-q")
    assert (code, lines) == (1, [error, "tagged 3 of 4 files (1 failed)"])
    after = files(out_ray)
    assert after.keys() == before.keys()
    for path, (data, mtime_ns) in before.items():
        assert after[path][0] == data and after[path][1] != mtime_ns, path


def test_ray_cuda_without_gpus(tiny_model_dir, films, ray_address, tmp_path, capsys):
    """--device cuda: each film would wait for a GPU; a cluster without one is one error line."""
    code, lines = run_here(capsys, "tag", films, "--model", tiny_model_dir, "--out-dir", tmp_path / "tags",
                           "--engine", "ray", "--device", "cuda")
    assert (code, lines) == (1, ["speakertag: error: --device cuda asked for, but the Ray cluster has no GPU"])
    assert not (tmp_path / "tags").exists()


def test_ray_interrupted_cancels_the_other_films(tiny_model_dir, example, ray_address, tmp_path):
    """Ctrl-C after the first film: the films still running or queued are cancelled, so the
    cluster's CPUs are free again at once (each of the others takes about 2 s of one CPU)."""
    from speakertag.tagging import VoiceSpec
    from speakertag.cluster import tag_on_ray

    films = []
    for i in range(12):
        films.append(tmp_path / f"film{i}.mp4")
        os.symlink(example / "movie01.mp4", films[-1])
    finished = []

    with pytest.raises(KeyboardInterrupt):
        for film, _ in tag_on_ray(films, VoiceSpec((tiny_model_dir,))):
            finished.append(film)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first film is handled
    interrupted = time.monotonic()
    assert len(finished) == 1
    free_since = None  # all CPUs free, without a break, for 1 s: nothing runs or waits to run
    while time.monotonic() - interrupted < 5 and (free_since is None or time.monotonic() - free_since < 1):
        free = ray.available_resources().get("CPU", 0) == 2
        free_since = (free_since or time.monotonic()) if free else None
        time.sleep(0.05)
    assert free_since is not None and time.monotonic() - free_since >= 1, ray.available_resources()


@pytest.mark.parametrize("there", ["nothing", "not-ray"])
def test_ray_address_without_a_head_fails_fast(tiny_model_dir, films, tmp_path, there):
    """issue 34, case 7: --ray-address HOST:PORT where nothing listens, or where something
    answers that is not a Ray cluster's head: one line within seconds, not Ray's retries and
    its C++ log lines for minutes."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    if there == "nothing":
        server.close()
    else:
        server.listen(8)

        def hang_up():
            with contextlib.suppress(OSError):
                while True:
                    server.accept()[0].close()

        threading.Thread(target=hang_up, daemon=True).start()
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "speakertag", "tag", films / "speech.wav", "--model", tiny_model_dir,
                        "--out-dir", tmp_path / "tags", "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=120)
    server.close()
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith(
        f"speakertag: error: cannot reach Ray at 127.0.0.1:{port}: "), r.stderr
    assert ("Connection refused" if there == "nothing" else "not a Ray cluster's head") in r.stderr
    assert time.monotonic() - started < 60  # a Python start with torch, and a refusal within 10 s
    assert not (tmp_path / "tags").exists()
