#!/usr/bin/env python3
"""How long do a few moments of a long film take to read, against decoding the whole film?

    python scripts/benchmark_seek.py [--hours 2] [--span 60:00-60:15 --span 1:50:00-1:50:20]

Builds two films of --hours in a temporary folder from the example film's soundtrack repeated
(AC-3 5.1 in Matroska, as scripts/benchmark_speed.py builds them, and AAC stereo in MP4), then
for each prints the wall seconds to read the spans as `train --positive FILM@SPANS` reads them
(audio.load_span: a seek to each, then a decoding of the span alone), to read and choose the
film's sound bed as train does then (train.film_beds: stretches read by seeking and embedded by
the shipped base), and to decode the whole film at the model rate (what reading the spans would
cost without seeking). Prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from speakertag.audio import decode_blocks, load_span
from speakertag.model import load_model, shipped_base_dir
from speakertag.params import AudioParams, Params
from speakertag.spans import FilmSpans, parse_spans
from speakertag.train import Clip, film_beds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_speed import RATE_HZ, build_film, example_soundtrack  # noqa: E402

AAC_FRAME = 1024


def build_aac_film(path: Path, hours: float, stereo: np.ndarray) -> None:
    """AAC stereo in .mp4: the soundtrack encoded once, its packets muxed again and again up to `hours`."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=RATE_HZ, layout="stereo")
        s.bit_rate = 128_000
        cycle = []
        n_frames = stereo.shape[1] // AAC_FRAME
        for i in range(n_frames + 1):
            frame = None
            if i < n_frames:
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[:, i * AAC_FRAME:(i + 1) * AAC_FRAME]),
                                                   format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = RATE_HZ, i * AAC_FRAME
            cycle += [bytes(p) for p in s.encode(frame)]
        for i in range(int(hours * 3600 * RATE_HZ) // AAC_FRAME):
            packet = av.Packet(cycle[i % len(cycle)])
            packet.stream, packet.time_base = s, Fraction(1, RATE_HZ)
            packet.pts = packet.dts = i * AAC_FRAME
            packet.duration = AAC_FRAME
            out.mux(packet)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--span", action="append", help="START-END, seconds or [hh:]mm:ss (default: two of 15 and 20 s)")
    args = ap.parse_args()
    spans = [s for text in (args.span or ["60:00-60:15", "1:50:00-1:50:20"]) for s in parse_spans(text)]
    rate = AudioParams().sample_rate_hz
    stereo = example_soundtrack()
    base = load_model(shipped_base_dir())
    with tempfile.TemporaryDirectory() as tmp:
        films = {"AC-3 5.1, Matroska": Path(tmp) / "film.mkv", "AAC stereo, MP4": Path(tmp) / "film.mp4"}
        t0 = time.perf_counter()
        build_film(films["AC-3 5.1, Matroska"], args.hours, stereo)
        build_aac_film(films["AAC stereo, MP4"], args.hours, stereo)
        print(f"built two {args.hours:g}-hour films in {time.perf_counter() - t0:.0f} s; spans "
              f"{', '.join(f'{s:g}-{e:g} s' for s, e in spans)} ({sum(e - s for s, e in spans):g} s)")
        for what, film in films.items():
            t0 = time.perf_counter()
            got = [load_span(film, s, e, rate) for s, e in spans]
            spans_s = time.perf_counter() - t0
            assert [len(x) for x in got] == [round(e * rate) - round(s * rate) for s, e in spans]
            t0 = time.perf_counter()
            beds = film_beds([FilmSpans(film, tuple(spans))], [Clip("", x) for x in got], base, Params())
            beds_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            n = sum(len(b) for b in decode_blocks(film, rate))
            whole_s = time.perf_counter() - t0
            print(f"{what}: the spans in {spans_s:.2f} s; the sound bed ({len(beds)} stretches) in {beds_s:.1f} s; the whole film ({n / rate / 3600:.2f} h) decoded in "
                  f"{whole_s:.1f} s ({whole_s / spans_s:.0f} times as long)", flush=True)


if __name__ == "__main__":
    main()
