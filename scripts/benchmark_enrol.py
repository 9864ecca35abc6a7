#!/usr/bin/env python3
"""Enrolment from a few moments of the film itself, without negatives, against the task's clips.

    python scripts/benchmark_enrol.py DATASET_DIR [--seeds 0 1 2] [--models /tmp/devmodels]
        [--film-negatives 0.5] [--out results.json]

For each task of DATASET_DIR (laid out as for scripts/benchmark_quality.py) and seed:
  spans: four of the target's reference segments in the test film (drawn with the seed among
    those of 2 s or more until they hold 15-25 s in all; where no four do, four of them cut to
    their middle parts, 20 s in all) are the positives, `train --positive FILM@SPANS` without
    --negative: the shipped bank of other sounds;
  clips: the task's train/positive and train/negative clips, as benchmark_quality.py trains;
  one negative moment (--negative-moment): as spans, plus `--negative FILM@START-END` of the
    other voice that the spans voice took most for the target (false alarms on the rest of the
    film, by the reference naming every speaker: ref/movie01.csv): its longest turn outside the
    spans, cut to its middle 10 s; what a user does after seeing that voice tagged. That moment
    is cut out of this kind's scoring too;
  film negatives (--film-negatives Q): as spans, plus windows of the same film as negatives:
    2 s windows every second, more than 2 s away from the spans, embedded by the base encoder;
    the share Q of them least like the spans' windows (top-5 mean cosine) join the shipped bank.
    The target speaks elsewhere in the film: the share of their time that is the target's
    (from the reference, for the measurement alone) is printed as "target in them".
Each voice tags the film; the four spans are then cut out of the reference and of the
hypothesis alike, and the rest of the film is scored (collar 0.25 s). Printed: a row per task
and seed, then each task's F1 pooled over the seeds and the F1 pooled over everything, with
the difference spans - clips (the acceptance of issue 35: within 0.03).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from speakertag.allocator import reuse_freed_memory
from speakertag.audio import load_audio
from speakertag.evaluate import anatomy, pool, read_others, read_reference, score
from speakertag.memory import load_memory, save_memory
from speakertag.model import impostors_of, load_model, negatives_of, resolve_device, save_model, shipped_base_dir
from speakertag.params import Params
from speakertag.spans import merge_spans, subtract_spans
from speakertag.tagging import Voice, tag
from speakertag.train import Clip, Windows, embed_chunks, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_quality import trained_voice  # noqa: E402

N_SPANS, MIN_S, MAX_S, SHORTENED_S = 4, 15.0, 25.0, 20.0
GUARD_S = 2.0  # film-negative windows keep this far from the spans
MOMENT_S = 10.0  # --negative-moment: at most this long


def reference_spans(reference: list[tuple[float, float]], seed: int) -> list[tuple[float, float]]:
    """Four target segments of 2 s or more holding 15-25 s in all, drawn with `seed`; where no
    draw of 1000 finds such four, four of them drawn and cut to their middle parts, 20 s in all."""
    rng = np.random.default_rng(seed)
    long = [(s, e) for s, e in reference if e - s >= 2.0]
    for _ in range(1000):
        pick = sorted(rng.choice(len(long), size=N_SPANS, replace=False))
        if MIN_S <= sum(long[i][1] - long[i][0] for i in pick) <= MAX_S:
            return [long[i] for i in pick]
    pick = [long[i] for i in sorted(rng.choice(len(long), size=N_SPANS, replace=False))]
    keep = SHORTENED_S / sum(e - s for s, e in pick)
    return [(round((s + e) / 2 - keep * (e - s) / 2, 3), round((s + e) / 2 + keep * (e - s) / 2, 3)) for s, e in pick]


def film_negatives(film: Path, spans: list[tuple[float, float]], share: float, base, folder: Path
                   ) -> list[tuple[float, float]]:
    """The film's 2 s windows (one a second, GUARD_S away from the spans) least like the spans'
    windows by the base encoder: the `share` of them farthest, written as WAV clips into
    `folder` (touching windows joined); returns their (start_s, end_s) stretches."""
    import soundfile as sf

    a = base.params.audio
    rate = a.sample_rate_hz
    x = load_audio(film, rate)
    dev = resolve_device(None)
    base.encoder.to(dev)
    pos = Windows.of([Clip(f"{s}", x[round(s * rate):round(e * rate)]) for s, e in spans], a)
    pos_emb = embed_chunks(base, pos.chunks(), dev)
    width = a.window_s
    starts = [float(t) for t in np.arange(0.0, len(x) / rate - width, 1.0)
              if not any(t < e + GUARD_S and t + width > s - GUARD_S for s, e in spans)]
    cand = Windows.of([Clip(f"{t}", x[round(t * rate):round(t * rate) + a.window_samples]) for t in starts], a)
    emb = embed_chunks(base, cand.chunks(), dev)
    base.encoder.cpu()
    sim = np.sort(emb @ pos_emb.T, axis=1)[:, -5:].mean(axis=1)
    keep = np.argsort(sim)[:int(round(share * len(starts)))]
    stretches = merge_spans([(starts[i], starts[i] + width) for i in keep])
    folder.mkdir(parents=True, exist_ok=True)
    for s, e in stretches:
        sf.write(str(folder / f"film_{s:08.1f}.wav"), x[round(s * rate):round(e * rate)], rate)
    return stretches


def negative_moment(film: Path, task: Path, spans: list[tuple[float, float]], voice: Voice
                    ) -> tuple[float, float] | None:
    """The middle 10 s (or less) of the longest turn outside the spans of the other voice that
    `voice` takes most for the target on the rest of `film` (ref/movie01.csv names every voice);
    None when it takes none."""
    name = task.name.split("_", 1)[1]
    others = read_others(task / "ref" / "movie01.csv", name)
    hyp = subtract_spans([(g.start_s, g.end_s) for g in tag(film, voice).segments], spans)
    by = anatomy(subtract_spans(read_reference(task / "ref" / "movie01.target.csv"), spans), hyp,
                 others).false_alarm_by_speaker
    if not any(by.get(k, 0.0) > 0 for k in by if k):
        return None
    worst = max((k for k in by if k), key=by.get)
    turns = [t for s, e, n in others if n == worst for t in subtract_spans([(s, e)], spans)]
    s, e = max(turns, key=lambda t: t[1] - t[0])
    half = min(e - s, MOMENT_S) / 2
    return round((s + e) / 2 - half, 3), round((s + e) / 2 + half, 3)


def cached(folder: Path | None, key: object, make) -> tuple[Voice, float]:
    """(voice, train seconds, 0 when loaded): make() -> (model, memory), kept in folder under key's hash."""
    where = folder / hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12] \
        if folder else None
    if where and (where / "memory.npz").is_file():
        return Voice(load_model(where), load_memory(where)), 0.0
    t0 = time.monotonic()
    model, memory = make()
    seconds = time.monotonic() - t0
    if where:
        where.mkdir(parents=True, exist_ok=True)
        save_model(model, where)
        save_memory(memory, where)
    return Voice(model, memory), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--film", default="movie01.mp4", help="the test film's file name in each task's test/")
    ap.add_argument("--models", type=Path, help="cache of the trained voices, reused when present (outside the "
                    "repository); the clip-trained ones as benchmark_quality.py --models keeps them")
    ap.add_argument("--tasks", nargs="+", help="only these tasks (folder names)")
    ap.add_argument("--base", type=Path, help="base model folder (default: the shipped one)")
    ap.add_argument("--film-negatives", type=float, default=0.0, metavar="Q",
                    help="also train on spans plus the share Q of the film's windows least like them (0: not)")
    ap.add_argument("--negative-moment", action="store_true",
                    help="also train on spans plus one moment of the voice most taken for the target as a negative")
    ap.add_argument("--out", type=Path, help="write every row here (JSON)")
    args = ap.parse_args()
    reuse_freed_memory()

    tasks = sorted(d for d in args.dataset.iterdir() if (d / "train" / "positive").is_dir()
                   and (not args.tasks or d.name in args.tasks))
    base_dir = args.base or shipped_base_dir()
    base = load_model(base_dir)
    impostors = impostors_of(base_dir)
    quality_args = argparse.Namespace(models=args.models, base=str(base_dir), no_impostors=False)
    kinds = (["spans", "clips"] + (["film negatives"] if args.film_negatives else [])
             + (["negative moment"] if args.negative_moment else []))
    rows, found = [], {}
    print(f"{'task':<22}{'seed':>5}{'spans':>8}" + "".join(f"{k + ' P/R/F1':>24}" for k in kinds)
          + f"{'target in them':>16}{'train s':>10}", flush=True)
    for task in tasks:
        film = task / "test" / args.film
        reference = read_reference(task / "ref" / "movie01.target.csv")
        for seed in args.seeds:
            p = replace(Params(), train=replace(Params().train, seed=seed))
            spans = reference_spans(reference, seed)
            spec = f"{film}@{','.join(f'{s:g}-{e:g}' for s, e in spans)}"
            voices, train_s, contamination = {}, {}, None
            key = [task.name, seed, spans, p.train.__dict__, p.tag.top_k, p.tag.negative_weight, base.fingerprint]
            voices["spans"], train_s["spans"] = cached(args.models, ["spans", *key], lambda: train(
                [spec], None, p, base, impostors=impostors)[:2])
            voices["clips"], train_s["clips"] = trained_voice(task, seed, p, base, quality_args)
            if args.film_negatives:
                with tempfile.TemporaryDirectory() as tmp:
                    stretches = film_negatives(film, spans, args.film_negatives, base, Path(tmp) / "film")
                    voices["film negatives"], train_s["film negatives"] = cached(
                        args.models, ["film negatives", args.film_negatives, *key], lambda: train(
                            [spec], [*negatives_of(base_dir), Path(tmp) / "film"], p, base, impostors=impostors)[:2])
                covered = sum(e - s for s, e in stretches)
                target = sum(min(e, re) - max(s, rs) for s, e in stretches for rs, re in reference
                             if min(e, re) > max(s, rs))
                contamination = target / covered if covered else 0.0
            cut = {kind: spans for kind in voices}
            if args.negative_moment:
                moment = negative_moment(film, task, spans, voices["spans"])
                voices["negative moment"], train_s["negative moment"] = (voices["spans"], 0.0) if moment is None \
                    else cached(args.models, ["negative moment", moment, *key], lambda: train(
                        [spec], [f"{film}@{moment[0]:g}-{moment[1]:g}"], p, base, impostors=impostors)[:2])
                cut["negative moment"] = [*spans, *([moment] if moment else [])]
            metrics = {}
            for kind, voice in voices.items():
                hyp = [(g.start_s, g.end_s) for g in tag(film, voice).segments]
                metrics[kind] = found[task.name, seed, kind] = score(subtract_spans(reference, cut[kind]),
                                                                     subtract_spans(hyp, cut[kind]))
            row = {"task": task.name, "seed": seed, "spans": spans, "spans_s": sum(e - s for s, e in spans),
                   **{f"{k}": {"precision": m.precision, "recall": m.recall, "f1": m.f1,
                               "threshold": voices[k].memory.threshold} for k, m in metrics.items()},
                   "target share of film negatives": contamination, "train s": train_s}
            rows.append(row)
            print(f"{task.name:<22}{seed:>5}{row['spans_s']:>8.1f}"
                  + "".join(f"{metrics[k].precision:>10.3f}{metrics[k].recall:>7.3f}{metrics[k].f1:>7.3f}" for k in kinds)
                  + (f"{contamination:>16.3f}" if contamination is not None else f"{'-':>16}")
                  + f"{train_s['spans']:>10.0f}", flush=True)
    print("\nF1 on the rest of each film, pooled over the seeds")
    for task in tasks:
        f1 = {k: pool([found[task.name, s, k] for s in args.seeds]).f1 for k in kinds}
        print(f"{task.name:<22}" + "".join(f"  {k} {f1[k]:.3f}" for k in kinds)
              + f"  spans - clips {f1['spans'] - f1['clips']:+.3f}")
    for kind in kinds:
        per_seed = [pool([found[t.name, s, kind] for t in tasks]).f1 for s in args.seeds]
        everything = pool([found[t.name, s, kind] for t in tasks for s in args.seeds]).f1
        print(f"pooled over films, {kind}: {everything:.3f} (per seed {', '.join(f'{f:.3f}' for f in per_seed)}); "
              f"mean of films {np.mean([pool([found[t.name, s, kind] for s in args.seeds]).f1 for t in tasks]):.3f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
