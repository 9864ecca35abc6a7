"""Training on real example clips: outputs, repeatability, calibration, bad clip sets."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from speakertag.augment import generated_backgrounds
from speakertag.errors import SpeakertagError
from speakertag.memory import load_memory
from speakertag.model import load_model, new_model
from speakertag.params import Params
from speakertag.train import (Backgrounds, Clip, Windows, average_weights, load_clips, memory_chunks,
                              memory_entry_clips, split_clips, train)
from conftest import TINY_NEGATIVE, TINY_POSITIVE, speech_like, train_tiny


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
