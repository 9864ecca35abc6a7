#!/usr/bin/env python3
"""How fast is tagging a long film, and how much memory does it need?

    python scripts/benchmark_speed.py [--model DIR] [--hours 2 4] [--film FILE ...] [--channels auto] [--train]

Builds films with AC-3 audio (5.1 by default, or --layout stereo) in Matroska (the
example film's soundtrack repeated to the length asked, encoded with PyAV) in a temporary
folder, then tags each in a fresh process and prints: wall seconds, audio seconds per wall
second ("x real time"), peak RSS (of the tagging process, and sampled with its decoding
process: decoder.py), and the split of the time between decode (waiting for the decoding
thread), features, encoder and search. It also times decoding alone (the floor for
the whole run), in the same run, and prints the ratio tag / decode. --film measures existing
files as well (or instead, with --hours 0); --channels is passed to both. With --train it
times `train` on the example clips. It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from speakertag.params import CHANNEL_CHOICES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "data" / "example"
RATE_HZ = 48000
FRAME = 1536  # AC-3 samples per frame


def example_soundtrack() -> np.ndarray:
    """The example film's soundtrack at 48 kHz as (2, n) float32."""
    with av.open(str(EXAMPLE / "movie01.mp4")) as c:
        parts = [f.to_ndarray() for f in c.decode(c.streams.audio[0])]
    return np.concatenate(parts, axis=1).astype(np.float32)


def build_film(path: Path, hours: float, stereo: np.ndarray, layout: str = "5.1") -> None:
    """AC-3 in .mkv: the stereo track (for 5.1: centre = mid, surrounds quieter) encoded
    once, then its packets muxed again and again (AC-3 frames are independent) up to `hours`."""
    mid = stereo.mean(axis=0)
    six = stereo if layout == "stereo" else np.stack(
        [stereo[0], stereo[1], mid, 0.1 * mid, 0.5 * stereo[0], 0.5 * stereo[1]]).astype(np.float32)
    n_frames = six.shape[1] // FRAME
    with av.open(str(path), "w") as out:
        s = out.add_stream("ac3", rate=RATE_HZ, layout=layout)
        s.bit_rate = 384_000
        cycle = []
        for i in range(n_frames + 1):
            frame = None
            if i < n_frames:
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(six[:, i * FRAME:(i + 1) * FRAME]),
                                                   format="fltp", layout=layout)
                frame.sample_rate = RATE_HZ
                frame.pts = i * FRAME
            cycle += [bytes(p) for p in s.encode(frame)]
        n_total = int(hours * 3600 * RATE_HZ) // FRAME
        for i in range(n_total):
            packet = av.Packet(cycle[i % len(cycle)])
            packet.stream = s
            packet.time_base = Fraction(1, RATE_HZ)
            packet.pts = packet.dts = i * FRAME
            packet.duration = FRAME
            out.mux(packet)


# Peak RSS from /proc (VmHWM): ru_maxrss would also count the parent's, inherited across exec.
PEAK_RSS = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"

CHILD = r"""
import json, os, sys, threading, time
t0 = time.perf_counter()
from speakertag.allocator import reuse_freed_memory
from speakertag.tagging import TagOptions, load_voice, tag
reuse_freed_memory()  # as the command line does
voice = load_voice(sys.argv[2])

def rss_mb(pid):  # 0 for a process that has just ended
    try:
        return int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")).split()[1]) / 1024
    except (OSError, StopIteration):
        return 0.0

total_mb, done = [0.0], threading.Event()
def sample():  # this process and its decoding process (decoder.py) together, every 0.1 s
    while not done.wait(0.1):
        kids = [c for t in os.listdir("/proc/self/task") for c in open(f"/proc/self/task/{t}/children").read().split()]
        total_mb[0] = max(total_mb[0], rss_mb("self") + sum(rss_mb(k) for k in kids))
threading.Thread(target=sample, daemon=True).start()
t1 = time.perf_counter()
r = tag(sys.argv[1], voice, TagOptions(channels=sys.argv[3]))
t2 = time.perf_counter()
done.set()
print(json.dumps({"wall_s": t2 - t1, "startup_s": t1 - t0, "duration_s": r.duration_s,
                  "stages_s": r.stage_s, "segments": len(r.segments),
                  "peak_rss_mb": PEAK_RSS, "peak_total_rss_mb": total_mb[0]}))
""".replace("PEAK_RSS", PEAK_RSS)

DECODE_ONLY = r"""
import json, sys, time
from speakertag.allocator import reuse_freed_memory
from speakertag.audio import decode_blocks
reuse_freed_memory()  # as the command line does
t = time.perf_counter(); n = sum(len(b) for b in decode_blocks(sys.argv[1], 22050, channels=sys.argv[2]))
print(json.dumps({"wall_s": time.perf_counter() - t, "duration_s": n / 22050,
                  "peak_rss_mb": PEAK_RSS}))
""".replace("PEAK_RSS", PEAK_RSS)


def run_child(code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "child failed")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(film: Path, model: Path, channels: str) -> dict:
    """Decode alone, then tag, each in a fresh process; print both and their ratio."""
    dec = run_child(DECODE_ONLY, str(film), channels)
    print(f"  decode + downmix + resample alone: {dec['wall_s']:.1f} s = {dec['duration_s'] / dec['wall_s']:.0f}x real time "
          f"(the floor), peak RSS {dec['peak_rss_mb']:.0f} MB")
    r = run_child(CHILD, str(film), str(model), channels)
    print(f"  tag: {r['wall_s']:.1f} s wall = {r['duration_s'] / r['wall_s']:.0f}x real time, "
          f"peak RSS {r['peak_rss_mb']:.0f} MB (with the decoding process, sampled: {r['peak_total_rss_mb']:.0f} MB), "
          f"{r['segments']} segments (+{r['startup_s']:.1f} s start-up)")
    print("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["stages_s"].items()))
    print(f"  decode {dec['wall_s']:.2f} s, tag {r['wall_s']:.2f} s: tag / decode = {r['wall_s'] / dec['wall_s']:.2f}")
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="model folder; default: train one on the example clips")
    ap.add_argument("--hours", type=float, nargs="+", default=[2.0, 4.0])
    ap.add_argument("--layout", choices=["5.1", "stereo"], default="5.1", help="AC-3 channel layout")
    ap.add_argument("--film", type=Path, nargs="+", default=[], help="also measure these files")
    ap.add_argument("--channels", choices=CHANNEL_CHOICES, default="auto",
                    help="how a stereo or 5.1 film becomes mono (speakertag --channels)")
    ap.add_argument("--train", action="store_true", help="also time training on the example clips")
    args = ap.parse_args()
    st = [sys.executable, "-m", "speakertag"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None or args.train:
            t = time.perf_counter()
            subprocess.run([*st, "train", "--positive", str(EXAMPLE / "positive"), "--negative",
                            str(EXAMPLE / "negative"), "--out", str(tmp / "model"), "--quiet"], check=True,
                           stdout=subprocess.DEVNULL)
            print(f"train on the example clips (46 s positive, 218 s negative): {time.perf_counter() - t:.1f} s wall")
            model = model or tmp / "model"
        stereo = example_soundtrack()
        rss = {}
        for hours in [h for h in args.hours if h > 0]:
            film = tmp / f"film_{hours:g}h.mkv"
            t = time.perf_counter()
            build_film(film, hours, stereo, args.layout)
            print(f"\nbuilt {film.name}: {hours:g} h of AC-3 {args.layout} 48 kHz in {time.perf_counter() - t:.0f} s "
                  f"({film.stat().st_size / 1e6:.0f} MB)")
            rss[hours] = measure(film, model, args.channels)["peak_rss_mb"]
            film.unlink()
        for film in args.film:
            print(f"\n{film}:")
            measure(film, model, args.channels)
        if len(rss) > 1:
            hs = sorted(rss)
            print(f"\npeak RSS {hs[-1]:g} h vs {hs[0]:g} h: {100 * (rss[hs[-1]] / rss[hs[0]] - 1):+.1f}%")


if __name__ == "__main__":
    main()
