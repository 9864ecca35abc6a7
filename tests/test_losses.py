import math

import pytest
import torch
import torch.nn.functional as F

from speakertag.losses import batch_all_triplet_loss, mine_hard_negatives, triplet_loss


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_triplet_loss_by_hand():
    a = unit([1, 0], [1, 0], [1, 0])
    p = unit([1, 0], [1, 1], [0, 1])  # cos(a, p) = 1, 0.707, 0
    n = unit([0, 1], [1, 0], [0, 1])  # cos(a, n) = 0, 1, 0
    # per row: relu(cos_an - cos_ap + 0.3) = 0, 1 - 0.707 + 0.3, 0.3
    expected = (0 + (1 - math.sqrt(0.5) + 0.3) + 0.3) / 3
    assert float(triplet_loss(a, p, n, 0.3)) == pytest.approx(expected, abs=1e-6)
    assert float(triplet_loss(a, p, n, 0.0)) == pytest.approx((1 - math.sqrt(0.5)) / 3, abs=1e-6)


def test_triplet_loss_has_gradients():
    a = torch.randn(4, 8, requires_grad=True)
    loss = triplet_loss(F.normalize(a, dim=-1), F.normalize(torch.randn(4, 8), dim=-1),
                        F.normalize(torch.randn(4, 8), dim=-1), 1.0)
    loss.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_batch_all_zero_when_separated():
    emb = unit([1, 0, 0], [1, 0.01, 0], [0, 1, 0], [0.01, 1, 0], [0, 0, 1])
    labels = torch.tensor([0, 0, 1, 1, 2])
    assert float(batch_all_triplet_loss(emb, labels, 0.3)) == 0.0


def test_batch_all_positive_when_overlapping():
    emb = unit([1, 0], [0, 1], [1, 0.1], [0.1, 1])
    labels = torch.tensor([0, 0, 1, 1])  # each class spans both directions
    loss = float(batch_all_triplet_loss(emb, labels, 0.3))
    assert loss > 0
    # it is the mean over the violating triplets only, computed here by brute force
    sim = emb @ emb.T
    values = [float(sim[a, n] - sim[a, p] + 0.3) for a in range(4) for p in range(4) for n in range(4)
              if a != p and labels[a] == labels[p] and labels[a] != labels[n]]
    violating = [v for v in values if v > 0]
    assert loss == pytest.approx(sum(violating) / len(violating), abs=1e-6)


def test_mine_hard_negatives_picks_violators():
    anchor = unit([1, 0, 0], [0, 1, 0])
    ap_sim = torch.tensor([0.9, 0.9])
    # pool: cos to anchor 0 of 0.95, 0.7, -1, 0 ...; to anchor 1: only index 4 is close
    pool = unit([0.95, math.sqrt(1 - 0.95 ** 2), 0], [0.7, 0, math.sqrt(1 - 0.49)], [-1, 0, 0],
                [0, 0, 1], [0, 1, 0.1], [0, -1, 0])
    gen = torch.Generator().manual_seed(0)
    picks = torch.stack([mine_hard_negatives(anchor, ap_sim, pool, 0.3, 4, gen) for _ in range(200)])
    # anchor 0: violators need cos > 0.9 - 0.3 = 0.6: indices 0 and 1, both drawn
    assert set(picks[:, 0].tolist()) == {0, 1}
    # anchor 1: only index 4 violates
    assert set(picks[:, 1].tolist()) == {4}


def test_mine_hard_negatives_without_violator_takes_hardest():
    anchor = unit([1, 0])
    pool = unit([0, 1], [0.5, 1], [-1, 0])  # best cos 0.447 < 1.0 - 0.3
    idx = mine_hard_negatives(anchor, torch.tensor([1.0]), pool, 0.3, 2)
    assert idx.tolist() == [1]


def test_mine_hard_negatives_limits_to_n_hardest():
    anchor = unit([1, 0])
    pool = unit(*[[1, 0.01 * i] for i in range(10)])  # all violate; hardest are the first
    gen = torch.Generator().manual_seed(1)
    picks = {int(mine_hard_negatives(anchor, torch.tensor([0.0]), pool, 0.3, 3, gen)) for _ in range(100)}
    assert picks == {0, 1, 2}
