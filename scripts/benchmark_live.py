"""Memory and latency of a long live run: a generated stream piped into `speakertag tag -`.

The example film's soundtrack is looped into one Matroska stream (16-bit PCM, 16 kHz mono)
of --hours and written to the tagger's standard input as fast as it reads; every --every
seconds the tagger's resident memory (VmRSS) and its peak so far (VmHWM) are printed with
how much audio has gone in. At the end: the segments' latency (audio decoded when each was
given out, minus its end) and the real-time factor.

    python scripts/benchmark_live.py --model models/alice --hours 0.5
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np

RATE_HZ = 16000
CLOSED = re.compile(r"^(\d+):(\d+):(\d+\.\d) - (\d+):(\d+):(\d+\.\d)  .*\(closed at (\d+\.\d) s, ")


def status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def soundtrack(path: Path) -> np.ndarray:
    """(n,) int16 mono at RATE_HZ."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from speakertag.audio import load_audio

    return np.round(np.clip(load_audio(path, RATE_HZ), -1, 1) * 32767).astype(np.int16)


def write_stream(pipe, audio: np.ndarray, total_s: float, written: list[float]) -> None:
    """Loop `audio` into a Matroska stream on `pipe` until total_s seconds are written."""
    try:
        with av.open(pipe, "w", format="matroska") as c:
            s = c.add_stream("pcm_s16le", rate=RATE_HZ, layout="mono")
            n, pts, frame_n = int(total_s * RATE_HZ), 0, RATE_HZ // 10
            while pts < n:
                i = pts % len(audio)
                chunk = audio[i:i + min(frame_n, n - pts)]
                frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
                frame.sample_rate, frame.pts = RATE_HZ, pts
                for packet in s.encode(frame):
                    c.mux(packet)
                pts += len(chunk)
                written[0] = pts / RATE_HZ
            for packet in s.encode(None):
                c.mux(packet)
    except (BrokenPipeError, OSError):
        pass
    finally:
        pipe.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder")
    ap.add_argument("--hours", type=float, default=0.5, help="length of the generated stream")
    ap.add_argument("--film", default=str(Path(__file__).resolve().parent.parent / "data" / "example" / "movie01.mp4"))
    ap.add_argument("--every", type=float, default=10.0, help="seconds (wall clock) between memory lines")
    args = ap.parse_args()

    audio = soundtrack(Path(args.film))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "live.csv"
        proc = subprocess.Popen([sys.executable, "-m", "speakertag", "tag", "-", "--model", args.model, "--out", str(out)],
                                stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=False)
        written = [0.0]
        writer = threading.Thread(target=write_stream, args=(proc.stdin, audio, args.hours * 3600, written), daemon=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(x.decode() for x in proc.stderr), daemon=True)
        started = time.monotonic()
        writer.start()
        reader.start()
        print("wall_s  audio_in_s  rss_mb  peak_rss_mb", flush=True)
        while proc.poll() is None:
            time.sleep(args.every)
            try:
                kb = status_kb(proc.pid)
            except OSError:
                break
            if "VmRSS" not in kb:  # exiting
                break
            print(f"{time.monotonic() - started:6.0f}  {written[0]:10.0f}  {kb['VmRSS'] / 1024:6.0f}  "
                  f"{kb['VmHWM'] / 1024:11.0f}", flush=True)
        proc.wait()
        wall_s = time.monotonic() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        reader.join(5)
    latencies = []
    for line in lines:
        m = CLOSED.match(line)
        if m:
            h, mi, s = (float(x) for x in m.groups()[3:6])
            latencies.append(float(m.group(7)) - (h * 3600 + mi * 60 + s))
    print(f"exit {proc.returncode}; peak RSS {peak_mb:.0f} MB; {written[0]:.0f} s of audio in {wall_s:.0f} s ({written[0] / wall_s:.1f}x real time); "
          f"{len(latencies)} segments, latency (audio after a segment's end when it was given out) "
          + (f"median {np.median(latencies):.2f} s, max {max(latencies):.2f} s" if latencies else "-"))
    tail = [x for x in lines if not CLOSED.match(x)]
    if tail:
        print("".join(tail[-3:]), end="")


if __name__ == "__main__":
    main()
