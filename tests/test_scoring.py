import numpy as np
import pytest

from speakertag.memory import build_index
from speakertag.scoring import (Calibration, Scorer, calibrate_threshold, calibration_problem,
                                tagged_negative_share, top_k_mean, top_k_mean_excluding)


def unit(rows):
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


MEMORY = unit([[1, 0, 0], [0.8, 0.6, 0], [0.6, 0.8, 0], [0, 1, 0]])


def test_top_k_mean_by_hand():
    index = build_index(MEMORY)
    q = unit([[1, 0, 0], [0, 0, 1]])
    # cosines of q0 to the memory: 1, 0.8, 0.6, 0; of q1: all 0
    np.testing.assert_allclose(top_k_mean(index, q, 1), [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(top_k_mean(index, q, 2), [0.9, 0.0], atol=1e-6)
    np.testing.assert_allclose(top_k_mean(index, q, 3), [0.8, 0.0], atol=1e-6)
    # k larger than the memory: the mean over all entries
    np.testing.assert_allclose(top_k_mean(index, q, 10), [0.6, 0.0], atol=1e-6)
    assert top_k_mean(index, q, 2).shape == (2,)


def test_scorer_subtracts_weighted_negative_similarity():
    negatives = unit([[0, 0, 1]])
    q = unit([[1, 0, 1]])  # cos 0.707 to entry 0 and to the negative
    plain = Scorer(MEMORY, negatives, top_k=1, negative_weight=0.0)
    weighted = Scorer(MEMORY, negatives, top_k=1, negative_weight=0.5)
    np.testing.assert_allclose(plain(q), [np.sqrt(0.5)], atol=1e-6)
    np.testing.assert_allclose(weighted(q), [np.sqrt(0.5) * 0.5], atol=1e-6)
    # no negatives: the weight has nothing to act on
    np.testing.assert_allclose(Scorer(MEMORY, np.zeros((0, 3), np.float32), 1, 0.5)(q), plain(q))


def test_calibrate_separable():
    pos = np.array([0.9, 0.85, 0.8, 0.95])
    neg = np.array([0.1, 0.3, 0.5, 0.2, 0.4, 0.45])
    c = calibrate_threshold(pos, neg)
    assert c.precision == 1.0 and c.recall == 1.0 and c.f1 == 1.0
    assert 0.5 < c.threshold < 0.8
    assert c.threshold == pytest.approx(0.65)  # half-way between the classes
    assert (c.rule, c.n_positive, c.n_negative) == ("best F1", 4, 6)


def weighted_precision(pos, neg, threshold, share=0.2):
    """Precision with the positives weighted to the target's share of film time, as
    calibrate_threshold documents (default share 0.2)."""
    tp = np.mean(pos >= threshold) * share
    fp = np.mean(neg >= threshold) * (1 - share)
    return tp / (tp + fp) if tp + fp else 0.0


def test_precision_rule_respects_the_target():
    rng = np.random.default_rng(0)
    pos = rng.normal(0.7, 0.1, 300)
    neg = rng.normal(0.4, 0.1, 900)
    for target in (0.8, 0.9, 0.95, 0.99):
        c = calibrate_threshold(pos, neg, "precision", target)
        assert c.rule == f"precision >= {target:g}"
        assert weighted_precision(pos, neg, c.threshold) >= target
        assert c.precision == pytest.approx(weighted_precision(pos, neg, c.threshold))
        assert c.recall == pytest.approx(np.mean(pos >= c.threshold))
        # the lowest such threshold: every lower cut misses the target
        scores = np.concatenate([pos, neg])
        assert all(weighted_precision(pos, neg, t) < target for t in scores[scores < c.threshold])
    # a stricter target never gives a lower threshold or more recall
    ths = [calibrate_threshold(pos, neg, "precision", t).threshold for t in (0.8, 0.9, 0.95, 0.99)]
    assert ths == sorted(ths)


def test_f1_rule_beats_other_cuts():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(0.6, 0.15, 200), rng.normal(0.4, 0.15, 400)
    c = calibrate_threshold(pos, neg)
    scores = np.concatenate([pos, neg])

    def f1(t):
        p, r = weighted_precision(pos, neg, t), np.mean(pos >= t)
        return 2 * p * r / (p + r) if p + r else 0.0

    assert c.f1 == pytest.approx(f1(c.threshold))
    assert all(f1(t) <= c.f1 + 1e-12 for t in scores)


def test_calibrate_ties_and_errors():
    # equal scores in both classes are never split: the cut falls between distinct values
    # share 1/3, cuts: 0.7 (precision 1, recall 1/3, F1 0.5) or 0.3 (precision 0.5, recall 1, F1 0.67)
    c = calibrate_threshold(np.array([0.9, 0.5, 0.5]), np.array([0.5, 0.1]), target_share=1 / 3)
    assert c.threshold == pytest.approx(0.3)
    assert c.f1 == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="unknown threshold rule"):
        calibrate_threshold(np.array([0.9]), np.array([0.1]), "recall")
    with pytest.raises(ValueError):
        calibrate_threshold(np.array([]), np.array([0.1]))
    with pytest.raises(ValueError, match="target share"):
        calibrate_threshold(np.array([0.9]), np.array([0.1]), target_share=1.0)


def test_rarer_target_gets_a_stricter_threshold():
    """The less of the film the target is expected to fill, the more each false alarm costs:
    the best-F1 threshold never falls as the share falls."""
    rng = np.random.default_rng(2)
    pos, neg = rng.normal(0.6, 0.12, 400), rng.normal(0.4, 0.12, 800)
    ths = [calibrate_threshold(pos, neg, target_share=s).threshold for s in (0.5, 1 / 3, 0.2, 0.1)]
    assert ths == sorted(ths) and ths[-1] > ths[0]


def test_top_k_mean_excluding_skips_own_group():
    entries = np.eye(4, dtype=np.float32)
    groups = np.array([0, 0, 1, 2])
    q = entries[:1]
    # Without exclusion the query matches itself (1.0); excluding group 0 leaves only zeros.
    assert top_k_mean_excluding(q, np.array([-1]), entries, groups, 1)[0] == pytest.approx(1.0)
    assert top_k_mean_excluding(q, np.array([0]), entries, groups, 1)[0] == pytest.approx(0.0)
    # Fewer than k entries outside the group count as -1.
    assert top_k_mean_excluding(q, np.array([0]), entries, groups, 3)[0] == pytest.approx((0 + 0 - 1) / 3)


def test_impostors_carry_their_share_whatever_their_count():
    """Impostor windows weigh `impostor_share` of the non-target mass: a thousand copies of
    the same impostor windows give the threshold that ten give; share 0 ignores them, and a
    larger share of close impostors never lowers the threshold."""
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(0.6, 0.1, 300), rng.normal(0.2, 0.1, 600)
    imp = rng.normal(0.5, 0.05, 10)

    def thr(impostors, share):
        return calibrate_threshold(pos, neg, impostor_scores=impostors, impostor_share=share).threshold

    assert thr(np.repeat(imp, 100), 0.2) == pytest.approx(thr(imp, 0.2))
    assert thr(imp, 0.0) == calibrate_threshold(pos, neg).threshold == thr(None, 0.5)
    ths = [thr(imp, s) for s in (0.0, 0.1, 0.3, 0.6)]
    assert ths == sorted(ths) and ths[-1] > ths[0]
    with pytest.raises(ValueError, match="impostor share"):
        thr(imp, 1.0)


@pytest.mark.parametrize("seed, rule", [(0, "f1"), (1, "f1"), (2, "precision"), (3, "precision")])
def test_tagged_negative_share_is_the_count_above_the_threshold(seed, rule):
    rng = np.random.default_rng(seed)
    pos, neg = rng.normal(0.6, 0.15, 80), rng.normal(0.35, 0.15, 300)
    c = calibrate_threshold(pos, neg, rule, 0.9)
    assert tagged_negative_share(c) == pytest.approx(np.mean(neg > c.threshold), abs=1e-9)


def test_a_threshold_that_tags_most_negatives_is_a_problem():
    rng = np.random.default_rng(0)
    good = calibrate_threshold(rng.normal(0.7, 0.1, 50), rng.normal(0.3, 0.1, 200))
    assert calibration_problem(good) == ""
    # a target that scores like everything else: best F1 tags every window
    same = rng.normal(0.5, 0.1, 250)
    bad = calibrate_threshold(same[:50], same[50:])
    assert bad.recall > 0.9 and tagged_negative_share(bad) > 0.5
    assert "of the 200 other film-like calibration windows" in calibration_problem(bad)
    assert calibration_problem(bad, max_negative_share=1.0) == ""


def test_a_threshold_above_every_target_score_is_a_problem():
    c = Calibration(0.9, "precision >= 0.95", 0.0, 0.0, 0.0, 40, 100, 0.5, 0.2)
    assert "above every score of the target's 40 calibration windows" in calibration_problem(c)


def test_f1_tolerance_takes_the_middle_of_a_flat_best():
    """Scores where every threshold from 0.3 to 0.5 gives nearly the same F1: the tolerance
    takes the middle of that range, where plain argmax takes whichever point noise favours."""
    rng = np.random.default_rng(0)
    pos = np.r_[rng.uniform(0.5, 0.9, 200), rng.uniform(0.3, 0.5, 4)]
    neg = np.r_[rng.uniform(-0.2, 0.3, 800), rng.uniform(0.3, 0.5, 4)]
    plain = calibrate_threshold(pos, neg)
    flat = calibrate_threshold(pos, neg, f1_tolerance=0.02)
    assert flat.f1 >= plain.f1 - 0.02
    assert abs(flat.threshold - 0.4) < 0.05
    assert flat.rule == "middle of best F1 ± 0.02"
    assert calibrate_threshold(pos, neg, f1_tolerance=0.0) == plain
