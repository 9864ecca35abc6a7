#!/usr/bin/env python3
"""Train, tag and score every task of a data set; print one table.

    python scripts/benchmark_quality.py DATASET_DIR [--seeds 0 1 2] [--base models/base|none]
        [--film movie01.mp4 movie01.51.mkv] [--channels auto|centre|centre-weighted|average|coherent]

DATASET_DIR holds task folders laid out as train/positive, train/negative,
test/movie01.mp4, ref/movie01.target.csv. For each task and seed: `train` on the clips
(threshold chosen from the training clips only), `tag` the film, and only then read the
reference and score it (collar 0.25 s). Nothing is tuned on the test film: the "best thr"
columns are a diagnostic computed after the fact, showing how far the calibrated threshold
is from the best one for that film. --film picks the renditions of the test film to tag
with each trained model (movie01.51.mkv: the 5.1 AC-3 one, same reference; several: one
table each, from the same trainings) and --channels how their channels become mono.

Each row also gives the error anatomy (evaluate.anatomy): false alarm near the target's
speech (edge) and elsewhere, missed time in turns found in part (edge) and in turns missed
whole, F1 at collar 0; pooled per task and over all tasks, over the seeds.

--models DIR keeps each (task, seed) trained voice in DIR (outside the repository, e.g.
/tmp/devmodels) and loads it on later runs: a change to tagging or segmentation is then
measured by re-tagging only. The cache key holds the training params and the base; tag
params come from this run (--param tag.NAME=VALUE), not from the cached memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from speakertag.allocator import reuse_freed_memory
from speakertag.evaluate import Anatomy, anatomy, pool_anatomy, read_others, read_reference, score
from speakertag.memory import load_memory, save_memory
from speakertag.model import impostors_of, load_model, save_model, shipped_base_dir
from speakertag.params import CHANNEL_CHOICES
from speakertag.params import Params
from speakertag.segments import to_segments
from speakertag.tagging import TagOptions, Voice, tag
from speakertag.train import train
from speakertag.writers import render
from speakertag.io_utils import atomic_write_text


def best_threshold(result, voice: Voice, reference) -> tuple[float, float]:
    """(threshold, F1) of the best threshold for this film: a diagnostic, never used to tag."""
    a, tp = voice.model.params.audio, voice.params
    track = result.tracks[0]
    best = (0.0, -1.0)
    for thr in np.unique(np.round(track.window_scores, 3)):
        segs = to_segments(track.window_scores, float(thr), a, tp, duration_s=result.duration_s,
                           cell_db=result.cell_db, edge_threshold=track.edge_threshold,
                           short_scores=track.short_scores)
        f1 = score(reference, [(s.start_s, s.end_s) for s in segs]).f1
        if f1 > best[1]:
            best = (float(thr), f1)
    return best


def trained_voice(task: Path, seed: int, p: Params, base, args) -> tuple[Voice, float]:
    """(voice, train seconds, 0 when loaded from the --models cache) for this task and seed."""
    key = json.dumps([p.audio.__dict__, p.encoder.__dict__, p.train.__dict__, p.augment.__dict__,
                      p.tag.top_k, p.tag.negative_weight, args.base if base else "none", args.no_impostors],
                     sort_keys=True, default=str)
    folder = args.models / f"{task.name}.seed{seed}.{hashlib.sha1(key.encode()).hexdigest()[:10]}" if args.models else None
    if folder and (folder / "memory.npz").is_file():
        return Voice(load_model(folder), load_memory(folder), tag_params=p.tag), 0.0
    t0 = time.monotonic()
    model, memory, _ = train([task / "train" / "positive"], [task / "train" / "negative"], p, base,
                             impostors=[] if args.no_impostors else impostors_of(Path(args.base) if base else shipped_base_dir()))
    train_s = time.monotonic() - t0
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
        save_model(model, folder)
        save_memory(memory, folder)
    return Voice(model, memory, tag_params=p.tag), train_s


def anatomy_row(label: str, a: Anatomy) -> str:
    m = a.metrics
    return (f"{label}{m.false_alarm_s:>8.1f}{a.false_alarm_edge_s:>8.1f}{a.false_alarm_elsewhere_s:>8.1f}"
            f"{m.miss_s:>8.1f}{a.miss_edge_s:>9.1f}{a.miss_whole_s:>9.1f}{a.segments_missed:>5}/{a.segments:<3}"
            f"{m.f1:>7.3f}{a.exact.f1:>7.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--base", default=str(shipped_base_dir()), help="base model folder, or 'none'")
    ap.add_argument("--no-impostors", action="store_true", help="calibrate without the shipped unseen voices")
    ap.add_argument("--steps", type=int, help="override max training steps")
    ap.add_argument("--film", nargs="+", default=["movie01.mp4"], help="the test film's file names in each task's "
                    "test/ folder, e.g. movie01.51.mkv (the 5.1 rendition, same reference)")
    ap.add_argument("--channels", choices=CHANNEL_CHOICES, default="auto",
                    help="how a stereo, 5.1 or 7.1 film becomes mono")
    ap.add_argument("--out", type=Path, help="folder for the hypotheses (CSV)")
    ap.add_argument("--models", type=Path, help="cache of trained voices, one folder per task and seed (outside "
                    "the repository); reused when present")
    ap.add_argument("--results", type=Path, help="write every row's anatomy here (JSON)")
    ap.add_argument("--param", action="append", default=[], metavar="GROUP.NAME=VALUE",
                    help="override a train or tag param, e.g. train.fine_tune_layers=all (repeatable)")
    args = ap.parse_args()
    reuse_freed_memory()  # as the command line does: its train times are the tool's

    tasks = sorted(d for d in args.dataset.iterdir() if (d / "train" / "positive").is_dir())
    missing = [f"test/{f} in {t.name}" for t in tasks for f in args.film if not (t / "test" / f).is_file()]
    if missing:
        sys.exit(f"missing: {', '.join(missing)}")
    if not tasks:
        sys.exit(f"no task folders in {args.dataset}")
    base = None if args.base == "none" else load_model(args.base)
    params = Params()
    if args.steps is not None:
        params = replace(params, train=replace(params.train, max_steps=args.steps))
    for item in args.param:
        key, value = item.split("=", 1)
        group, name = key.split(".")
        old = getattr(getattr(params, group), name)
        new = value if isinstance(old, str) else type(old)(json.loads(value))
        params = replace(params, **{group: replace(getattr(params, group), **{name: new})})
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)

    header = f"{'task':<22}{'film':<16}{'seed':>5}{'P':>7}{'R':>7}{'F1':>7}{'DetErr':>8}{'thr':>7}{'best thr':>9}{'best F1':>8}{'train s':>9}{'tag s':>7}"
    print(header)
    print("-" * len(header))
    found: dict[tuple[str, str, int], Anatomy] = {}
    for task in tasks:
        target = json.loads((task / "task.json").read_text())["target"] if (task / "task.json").is_file() else None
        for seed in args.seeds:
            p = replace(params, train=replace(params.train, seed=seed))
            voice, train_s = trained_voice(task, seed, p, base, args)
            for name in args.film:
                film = task / "test" / name
                t0 = time.monotonic()
                result = tag(film, voice, TagOptions(channels=args.channels))
                tag_s = time.monotonic() - t0
                if args.out:
                    atomic_write_text(args.out / f"{task.name}.{name}.seed{seed}.csv",
                                      render("csv", result.segments, input_path=str(film)))
                # Tagging is done: only now is the reference read.
                reference = read_reference(task / "ref" / "movie01.target.csv")
                everyone = task / "ref" / "movie01.csv"
                others = read_others(everyone, target) if target and everyone.is_file() else None
                hyp = [(s.start_s, s.end_s) for s in result.segments]
                a = found[task.name, name, seed] = anatomy(reference, hyp, others)
                m = a.metrics
                bt, bf1 = best_threshold(result, voice, reference)
                print(f"{task.name:<22}{name:<16}{seed:>5}{m.precision:>7.3f}{m.recall:>7.3f}{m.f1:>7.3f}{m.detection_error:>8.3f}"
                      f"{result.tracks[0].threshold:>7.3f}{bt:>9.3f}{bf1:>8.3f}{train_s:>9.1f}{tag_s:>7.1f}", flush=True)
    print("-" * len(header))
    print("\nerror anatomy (s): false alarm all / edge / elsewhere, missed all / edge / whole (turns missed / turns), "
          "F1 at collar 0.25 and 0")
    head = f"{'':<44}{'FA':>8}{'FA edge':>8}{'FA else':>8}{'miss':>8}{'ms edge':>9}{'ms whole':>9}{'turns':>9}{'F1':>7}{'F1@0':>7}"
    for name in args.film:
        print(head)
        for seed in args.seeds:
            for task in tasks:
                print(anatomy_row(f"{task.name:<22}{name:<16}{seed:>6}", found[task.name, name, seed]))
            print(anatomy_row(f"{'POOLED':<22}{name:<16}{seed:>6}", pool_anatomy([found[t.name, name, seed] for t in tasks])))
        if len(args.seeds) > 1:
            for task in tasks:
                print(anatomy_row(f"{task.name:<22}{name:<16}{'all':>6}",
                                  pool_anatomy([found[task.name, name, s] for s in args.seeds])))
            pooled = [pool_anatomy([found[t.name, name, s] for t in tasks]) for s in args.seeds]
            print(anatomy_row(f"{'POOLED':<22}{name:<16}{'all':>6}", pool_anatomy(pooled)))
            for what, values in (("F1", [a.metrics.f1 for a in pooled]), ("F1 at collar 0", [a.exact.f1 for a in pooled]),
                                 ("FA edge", [a.false_alarm_edge_s for a in pooled]),
                                 ("miss edge", [a.miss_edge_s for a in pooled])):
                print(f"{name}: pooled {what} over seeds: mean {np.mean(values):.3f}, min {np.min(values):.3f}, "
                      f"max {np.max(values):.3f}")
    if args.results:
        atomic_write_text(args.results, json.dumps([{"task": t, "film": f, "seed": s, **asdict(a)}
                                                    for (t, f, s), a in found.items()], indent=1))


if __name__ == "__main__":
    main()
