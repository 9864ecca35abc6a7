"""Cosine triplet losses and hard-negative mining. Embeddings are unit vectors."""

from __future__ import annotations

import torch


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float) -> torch.Tensor:
    """mean(relu(cos(a, n) - cos(a, p) + margin)) over rows of (batch, dim) unit vectors."""
    return torch.relu((anchor * negative).sum(-1) - (anchor * positive).sum(-1) + margin).mean()


def batch_all_triplet_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean cosine triplet loss over every valid (anchor, positive, negative) in the batch
    that violates the margin; 0 when none does.

    Batch-all rather than batch-hard: hardest-only triplets collapsed the encoder to a
    constant embedding when pretraining on many speakers.
    emb: (batch, dim) unit vectors; labels: (batch,) integer classes.
    """
    sim = emb @ emb.T
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    ap = (same & ~eye)[:, :, None]  # (a, p, 1)
    an = (~same)[:, None, :]  # (a, 1, n)
    losses = torch.relu(sim[:, None, :] - sim[:, :, None] + margin)  # (a, p, n): cos(a,n) - cos(a,p)
    valid = ap & an & (losses > 0)
    n = valid.sum()
    return (losses * valid).sum() / n.clamp(min=1)


def mine_hard_negatives(anchor: torch.Tensor, anchor_pos_sim: torch.Tensor, pool: torch.Tensor,
                        margin: float, n_per_anchor: int, generator: torch.Generator | None = None
                        ) -> torch.Tensor:
    """For each anchor, indices into `pool` of negatives that still violate the margin.

    anchor: (batch, dim); anchor_pos_sim: (batch,) cos(anchor, its positive);
    pool: (n_pool, dim) embeddings of the whole negative pool (refreshed by the caller as
    the model changes). Among the violators (cos(a, n) > cos(a, p) - margin) one of the
    `n_per_anchor` hardest is drawn at random (the single hardest is too often a
    mislabelled or degenerate window); with no violator, the hardest negative.
    Returns (batch,) long indices.
    """
    sim = anchor @ pool.T  # (batch, n_pool)
    k = min(n_per_anchor, pool.shape[0])
    top_sim, top_idx = sim.topk(k, dim=1)
    violating = top_sim > (anchor_pos_sim[:, None] - margin)
    n_viol = violating.sum(dim=1).clamp(min=1)
    pick = (torch.rand(len(anchor), generator=generator) * n_viol).long()
    return top_idx[torch.arange(len(anchor)), pick]
