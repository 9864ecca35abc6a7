"""Training on real example clips: outputs, repeatability, calibration, bad clip sets."""

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from speakertag.augment import generated_backgrounds
from speakertag.errors import SpeakertagError
from speakertag.memory import load_memory
from speakertag.model import load_model, new_model
from speakertag.params import Params
from speakertag.audio import load_audio
from speakertag.train import (Backgrounds, Clip, Windows, average_weights, degrade, film_beds, load_clips,
                              memory_chunks, memory_entry_clips, split_clips, train)
from conftest import TINY_NEGATIVE, TINY_POSITIVE, one_torch_thread, speech_like, train_tiny


def test_tiny_model_is_consistent(tiny_model_dir):
    model, memory = load_model(tiny_model_dir), load_memory(tiny_model_dir)
    assert memory.model_fingerprint == model.fingerprint
    assert memory.name == "tiny"
    assert -1.0 <= memory.threshold <= 1.0
    calib = memory.info["calibration"]
    assert 0.0 <= calib["precision"] <= 1.0 and 0.0 <= calib["recall"] <= 1.0
    # Clean + film-like copies of every positive window, unit vectors.
    assert len(memory.embeddings) % (1 + model.params.train.augmented_memory_copies) == 0
    assert np.allclose(np.linalg.norm(memory.embeddings, axis=1), 1.0, atol=1e-4)
    assert len(memory.negatives) > 0
    assert model.meta["history"][-1]["action"] == "train"


@pytest.mark.slow  # trains the tiny model again
def test_same_seed_same_model(tmp_path, tiny_model_dir):
    again = train_tiny(tmp_path / "again", tmp_path / "clips")
    assert load_model(again).fingerprint == load_model(tiny_model_dir).fingerprint


def test_average_weights_mixes_float_tensors_and_keeps_the_first_step_counts():
    torch.manual_seed(0)
    a = new_model(Params()).encoder
    a(torch.randn(4, 128, 172))  # batch-norm statistics and step counts move away from the fresh ones
    a, b, c = a.state_dict(), new_model(Params()).encoder.state_dict(), new_model(Params()).encoder.state_dict()
    mixed = average_weights([a, b], [0.25, 0.75])
    mean = average_weights([a, b, c])
    assert mixed.keys() == mean.keys() == b.keys()
    for k, v in a.items():
        if v.is_floating_point():
            assert torch.allclose(mixed[k], 0.25 * v + 0.75 * b[k])
            assert torch.allclose(mean[k], (v + b[k] + c[k]) / 3)
        else:
            assert torch.equal(mixed[k], v) and torch.equal(mean[k], v)
    assert any(not torch.equal(mixed[k], b[k]) for k in b if "num_batches_tracked" in k)
    assert all(torch.equal(x, y) for x, y in zip(average_weights([a, b], [1.0, 0.0]).values(), a.values()))


@pytest.mark.slow  # fine-tunes the shipped base
@pytest.mark.parametrize("share, same_as_base", [(0.0, True), (0.5, False)])
def test_fine_tuning_keeps_the_share_of_its_own_weights(tiny_model_dir, example, share, same_as_base):
    """Fine-tuning a base on real clips: share 0 gives the base back, 0.5 a new encoder."""
    base = load_model(tiny_model_dir)
    p = replace(base.params, train=replace(base.params.train, max_steps=2, eval_every_steps=2, batch_size=8,
                                           fine_tuned_share=share))
    pos = [example / "positive" / n for n in TINY_POSITIVE]
    neg = [example / "negative" / n for n in TINY_NEGATIVE]
    model, _, _ = train(pos, neg, p, base=base)
    mine, theirs = model.encoder.state_dict(), base.encoder.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in theirs.items() if v.is_floating_point()) == same_as_base


@pytest.mark.slow  # fine-tunes the shipped base
@pytest.mark.parametrize("layers", ["head", "all"])
def test_fine_tuning_trains_the_head_only_unless_asked(tiny_model_dir, example, layers):
    """The frame layers and the attention keep the base's weights; the head learns."""
    base = load_model(tiny_model_dir)
    p = replace(base.params, train=replace(base.params.train, max_steps=2, eval_every_steps=2, batch_size=8,
                                           fine_tune_layers=layers))
    model, _, _ = train([example / "positive" / n for n in TINY_POSITIVE],
                        [example / "negative" / n for n in TINY_NEGATIVE], p, base=base)
    mine, theirs = model.encoder.state_dict(), base.encoder.state_dict()
    changed = {k.split(".")[0] for k, v in theirs.items() if v.is_floating_point() and not torch.equal(mine[k], v)}
    assert changed == ({"pool_norm", "head"} if layers == "head" else {k.split(".")[0] for k in theirs})


def test_clip_windows_tile_short_clips():
    a = Params().audio
    short = Clip("short", speech_like(1.2, a.sample_rate_hz))
    long = Clip("long", speech_like(5.0, a.sample_rate_hz))
    w = Windows.of([short, long], a).cut()
    assert w.shape[1] == a.window_samples
    hop = a.hop_frames * a.hop_length
    assert len(w) == 1 + (1 + (len(long.samples) - a.window_samples) // hop)


def test_memory_entry_clips_follow_the_memory_layout():
    p = Params()
    clips = [Clip(str(i), speech_like(d, p.audio.sample_rate_hz, seed=i)) for i, d in enumerate((1.2, 5.0, 3.3))]
    rng = np.random.default_rng(0)
    rate = p.audio.sample_rate_hz
    bg = Backgrounds.of([speech_like(3.0, rate, seed=9)], generated_backgrounds(rate, rng))
    entries = np.concatenate(list(memory_chunks(Windows.of(clips, p.audio), bg, p, rng)))
    ids = memory_entry_clips([len(c.samples) for c in clips], p)
    assert len(ids) == len(entries) == (1 + p.train.augmented_memory_copies) * len(Windows.of(clips, p.audio))
    assert np.array_equal(ids, np.tile(Windows.of(clips, p.audio).clip_index, 1 + p.train.augmented_memory_copies))


def test_split_holds_back_whole_clips_or_tails():
    rng = np.random.default_rng(0)
    clips = [Clip(str(i), np.ones(1000, np.float32)) for i in range(10)]
    train, val = split_clips(clips, 0.2, rng)
    assert len(val) == 2 and len(train) == 8
    assert not {c.name for c in train} & {c.name for c in val}
    train, val = split_clips(clips[:2], 0.2, rng)
    assert [len(c.samples) for c in train] == [800, 800] and [len(c.samples) for c in val] == [200, 200]


def test_clips_too_short_or_silent_are_refused(write_wav, tmp_path):
    p = Params()
    write_wav("pos/short.wav", speech_like(0.5, 22050))
    write_wav("pos/silent.wav", np.zeros(22050 * 3, np.float32))
    with pytest.raises(SpeakertagError, match="no usable positive clips"):
        load_clips([tmp_path / "pos"], "positive", p)


def test_windows_cut_in_chunks_and_subsets():
    a = Params().audio
    clips = [Clip(str(i), speech_like(d, a.sample_rate_hz, seed=i)) for i, d in enumerate((1.2, 5.0, 3.3))]
    w = Windows.of(clips, a)
    every = w.cut()
    assert np.array_equal(np.concatenate(list(w.chunks(3))), every)
    rng = np.random.default_rng(0)
    assert w.subset(len(w), rng) is w and rng.random() == np.random.default_rng(0).random()
    sub = w.subset(4, rng)
    assert len(sub) == 4
    rows = [i for i in range(len(w)) if any(np.array_equal(every[i], s) for s in sub.cut())]
    assert len(rows) == 4


def test_degrade_per_window():
    """A probability per window: 0 keeps a window as it is, and the random draws are those of one
    probability for all (the same seed degrades the same windows the same way)."""
    p = Params()
    rng = np.random.default_rng(0)
    bg = Backgrounds.of([speech_like(3.0, p.audio.sample_rate_hz, seed=9)], generated_backgrounds(p.audio.sample_rate_hz, rng))
    w = np.stack([speech_like(p.audio.window_s, p.audio.sample_rate_hz, seed=i) for i in range(4)])
    mixed = degrade(w, bg, p, np.random.default_rng(1), np.array([0.0, 1.0, 0.0, 1.0]))
    every = degrade(w, bg, p, np.random.default_rng(1), 1.0)
    assert np.array_equal(mixed[[0, 2]], w[[0, 2]]) and not np.allclose(mixed[[1, 3]], w[[1, 3]])
    assert np.array_equal(degrade(w, bg, p, np.random.default_rng(1), np.ones(4)), every)


def test_film_beds_are_read_away_from_the_spans(tiny_model_dir, example):
    """The film's sound bed: 10 s stretches more than 2 s from every span, read as load_span
    reads them; the ones least like the spans when there are more than asked for."""
    from speakertag.audio import load_span
    from speakertag.spans import FilmSpans

    film, model = example / "movie01.mp4", load_model(tiny_model_dir)
    rate = model.params.audio.sample_rate_hz
    spans = ((0.0, 100.0), (134.0, 330.0))  # 102-132 s free: three stretches
    clips = [Clip("", load_span(film, s, e, rate)) for s, e in spans]
    p = replace(model.params, train=replace(model.params.train, film_bed_stretches=1))
    free = [load_span(film, t, t + 10.0, rate) for t in (102.0, 112.0, 122.0)]
    beds = film_beds([FilmSpans(film, spans)], clips, model, p)
    assert len(beds) == 1 and any(np.array_equal(beds[0], x) for x in free)
    assert film_beds([FilmSpans(film, spans)], clips, model, replace(p, train=replace(p.train, film_bed_stretches=0))) == []
    more = film_beds([FilmSpans(film, spans)], clips, model, replace(p, train=replace(p.train, film_bed_stretches=5)))
    assert len(more) == 3 and all(any(np.array_equal(b, x) for x in free) for b in more)


# --- moments of a film as positives, the shipped negatives --------------------------------------

SPANS = "50.961-58,203.5-214"  # two of the example film's target segments, 17.5 s


SMALL_BANK = ["lstc_*", "so762_*", "music_*", "noise_pink*"]  # the first file of each kind


@pytest.fixture(scope="module")
def small_bank(tmp_path_factory):
    """A base folder whose bank of other sounds is a few files of the shipped one (the whole
    bank: tests/test_cli.py), made the shipped base's while a test trains in `with small_bank():`;
    yields (that context, the bank folder)."""
    import contextlib
    import importlib

    from speakertag.model import NEGATIVES_DIR, negatives_of, shipped_base_dir

    fake_base = tmp_path_factory.mktemp("base")
    (fake_base / NEGATIVES_DIR).mkdir()
    for pattern in SMALL_BANK:
        shutil.copy(sorted(negatives_of(shipped_base_dir())[0].glob(pattern))[0], fake_base / NEGATIVES_DIR)

    @contextlib.contextmanager
    def shipped():
        with pytest.MonkeyPatch.context() as m, one_torch_thread():
            m.setattr(importlib.import_module("speakertag.train"), "shipped_base_dir", lambda: fake_base)
            yield

    return shipped, fake_base / NEGATIVES_DIR


def few_steps(base):
    return replace(base.params, train=replace(base.params.train, max_steps=2, eval_every_steps=2, batch_size=8,
                                              max_negative_share=1.0))


@pytest.fixture(scope="module")
def spans_voice(tiny_model_dir, example, small_bank):
    """(model, memory, report, bank folder) of a few steps on one positive clip and two spans of
    the example film, without negatives, fine-tuning the tiny model: the bank is small_bank's."""
    shipped, bank = small_bank
    base = load_model(tiny_model_dir)
    with shipped():
        return (*train([example / "positive" / TINY_POSITIVE[0], f"{example / 'movie01.mp4'}@{SPANS}"], None,
                       few_steps(base), base=base, impostors=[]), bank)


def test_spans_of_a_film_train_without_negatives(spans_voice, example):
    from speakertag.audio import load_span

    model, memory, report, bank = spans_voice
    film = str((example / "movie01.mp4").resolve())
    assert (report.n_positive_clips, report.n_positive_spans) == (1, 2)
    assert report.positive_films == (str(example / "movie01.mp4"),) and report.shipped_negatives
    assert report.n_negative_clips == len(SMALL_BANK)
    assert report.film_bed_s == pytest.approx(12 * 10.0)  # the film's own sound: 12 stretches of 10 s
    assert memory.info["positive_clips"] == [str((example / "positive" / TINY_POSITIVE[0]).resolve())]
    assert sorted(memory.info["negative_clips"]) == sorted(str(f.resolve()) for f in bank.iterdir())
    assert memory.info["films"] == [{"film": film, "stream": None, "channels": "auto", "negative_spans": [],
                                     "positive_spans": [[50.961, 58.0], [203.5, 214.0]]}]
    rate = model.params.audio.sample_rate_hz
    spans_s = sum(len(load_span(example / "movie01.mp4", s, e, rate)) for s, e in ((50.961, 58.0), (203.5, 214.0)))
    assert report.positive_s * rate == pytest.approx(spans_s + len(load_audio(example / "positive" / TINY_POSITIVE[0],
                                                                                rate)), abs=2)
    assert model.meta["history"][-1]["positive"][1:] == [f"{example / 'movie01.mp4'}@50.961-58",
                                                         f"{example / 'movie01.mp4'}@203.5-214"]


def test_the_shipped_bank_of_other_sounds():
    """Voices of the base's pretraining (never the impostors it is calibrated against), music, noise."""
    import csv

    from speakertag.model import IMPOSTORS_DIR, negatives_of, shipped_base_dir

    bank = negatives_of(shipped_base_dir())[0]
    files = sorted(f.name for f in bank.glob("*.opus"))
    with open(bank / "sources.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["file"] for r in rows) == files and len(files) >= 40
    voices = {r["speaker"] for r in rows if r["kind"] == "voice"}
    held_out = {ln.strip() for ln in (Path(__file__).parent.parent / "scripts" / "held_out_speakers.txt").read_text()
                .splitlines() if ln.strip() and not ln.startswith("#")}
    impostors = {f.name.split("__")[0] for f in (shipped_base_dir() / IMPOSTORS_DIR).iterdir()}
    assert len(voices) >= 30 and not voices & held_out and not voices & impostors
    assert not {v for r in rows if r["kind"] == "babble" for v in r["speaker"].split()} & (held_out | voices)
    assert {r["sex"] for r in rows if r["kind"] == "voice"} >= {"F", "M"}
    assert 1e6 <= sum(f.stat().st_size for f in bank.iterdir()) <= 2e6


def test_refine_finds_the_spans_a_voice_was_trained_on(spans_voice):
    """refine re-reads what a memory was made from: the clip, and the film's spans."""
    from speakertag.refine import _sources

    model, memory, _, _ = spans_voice
    pos, neg, films = _sources(model, memory, model.params)
    assert len(pos) == 1 and len(neg) == memory.info["negative_clips"].__len__()
    assert [m.positive_spans for m in films] == [((50.961, 58.0), (203.5, 214.0))]


@pytest.mark.parametrize("spans, phrase", [
    ("330-340", "span 330-340 s is beyond the end of"),
    ("50.961-58", "the positive spans hold 7.0 s of audio; training needs at least 10 s"),
    ("50-60,58-70", "spans 50-60 s and 58-70 s overlap"),
    ("60-50", "span 60-50 ends before it starts"),
])
def test_bad_spans_are_refused_before_training(example, spans, phrase):
    with pytest.raises(SpeakertagError, match=phrase):
        train([f"{example / 'movie01.mp4'}@{spans}"], base=None, impostors=[])


def test_a_moment_cannot_be_target_and_negative(example):
    film = example / "movie01.mp4"
    with pytest.raises(SpeakertagError, match="the positive span 50.961-69 s and the negative span 68-75 s overlap"):
        train([f"{film}@50.961-69"], [f"{film}@68-75"], base=None, impostors=[])


def test_moments_of_a_film_as_negatives(tiny_model_dir, example, small_bank, tmp_path):
    """--negative FILM@SPANS: another voice of the film (ls_1998 at 79.4-86.6 s, a spans file's rows
    not labelled with the voice's name) joins the bank, or the negative clips given with it;
    recorded in the memory's films."""
    film = example / "movie01.mp4"
    labels = tmp_path / "others.csv"
    labels.write_text("start,end,speaker\n50.961,69.091,target\n79.36,86.61,ls_1998\n")
    shipped, bank = small_bank
    base = load_model(tiny_model_dir)
    p = replace(few_steps(base), train=replace(few_steps(base).train, film_bed_stretches=0))
    with shipped():
        _, memory, report = train([f"{film}@50.961-69.091"], [f"{film}@{labels}"], p, base=base, impostors=[])
        clip = example / "negative" / TINY_NEGATIVE[0]
        _, memory_2, report_2 = train([f"{film}@50.961-69.091"], [f"{film}@79.36-86.61", clip], p, base=base,
                                      impostors=[])
    assert report.shipped_negatives and report.n_negative_clips == len(SMALL_BANK) + 1
    assert report.negatives().endswith("shipped with speakertag and 1 moment of other voices")
    assert sorted(memory.info["negative_clips"]) == sorted(str(f.resolve()) for f in bank.iterdir())
    assert memory.info["films"] == [{"film": str(film.resolve()), "stream": None, "channels": "auto",
                                     "positive_spans": [[50.961, 69.091]], "negative_spans": [[79.36, 86.61]]}]
    assert not report_2.shipped_negatives and report_2.negatives() == "1 negative clip and 1 moment of other voices"
    assert memory_2.info["negative_clips"] == [str(clip.resolve())]
    assert memory_2.info["films"] == memory.info["films"]


def test_a_film_without_audio_is_refused(tmp_path):
    from conftest import write_container

    film = write_container(tmp_path / "video.mp4", [], video=True)
    with pytest.raises(SpeakertagError, match="no audio stream in"):
        train([f"{film}@1-20"], base=None)


# --- what `speakertag train` asks of the library ------------------------------------------------

def test_base_folder_and_train_params(tmp_path):
    from speakertag.model import shipped_base_dir
    from speakertag.train import base_folder, train_params

    assert base_folder(None) == shipped_base_dir() and base_folder(tmp_path) == tmp_path
    assert base_folder("none") is None and base_folder(Path("NONE")) is None
    p = train_params(seed=3, steps=0, target_precision=0.9, target_share=0.5)
    assert (p.train.seed, p.train.max_steps, p.train.threshold_rule, p.train.target_precision,
            p.train.target_share) == (3, 0, "precision", 0.9, 0.5)
    assert replace(train_params(seed=3).train, seed=0) == Params().train


def test_train_report_summary():
    from speakertag.scoring import Calibration
    from speakertag.train import TrainReport

    calib = Calibration(0.4, "best F1", 0.9, 0.8, 0.85, 100, 400, 0.5, 0.2)
    report = TrainReport(1, 45, 44.0, 368.0, 120, 100, 60.0, calib, (), n_positive_spans=2,
                         positive_films=("a/film.mkv",), shipped_negatives=True, film_bed_s=120.0)
    trained, threshold = report.summary(Path("models/base")).splitlines()
    assert trained == ("trained on 2 spans of film.mkv and 1 positive clip (44 s) and 45 clips of other voices, music "
                       "and noise shipped with speakertag (368 s), heard over 120 s of the film's own sound, in 60.0 s "
                       "(120 steps, validation best at step 100; fine-tuned from models/base)")
    assert threshold.startswith("threshold 0.400 (best F1 on 100 target + 400 other film-like windows")
    scratch = replace(report, n_positive_clips=6, n_positive_spans=0, positive_films=(), shipped_negatives=False)
    assert scratch.summary(None).startswith("trained on 6 positive clips (44 s) and 45 negative clips (368 s)")
    assert scratch.summary(None).splitlines()[0].endswith("; from scratch)")
