"""Window scores against a memory, and the choice of a tagging threshold."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from .memory import build_index
from .params import TrainParams


def top_k_mean(index: faiss.Index, queries: np.ndarray, k: int) -> np.ndarray:
    """(n, dim) unit queries -> (n,) mean of each query's k best cosine similarities."""
    k = min(k, index.ntotal)
    sims, _ = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return sims.mean(axis=1)


def top_k_mean_excluding(queries: np.ndarray, query_groups: np.ndarray, entries: np.ndarray,
                         entry_groups: np.ndarray, k: int) -> np.ndarray:
    """Like top_k_mean over `entries`, but a query never matches entries of its own group
    (its own clip): leave-one-clip-out scores for calibration. Exact, in memory: for
    calibration-sized sets (a few thousand rows), not for films.
    queries: (n, dim); entries: (m, dim); groups: (n,) and (m,) integer ids."""
    sims = queries @ entries.T
    sims[query_groups[:, None] == entry_groups[None, :]] = -np.inf
    k = min(k, sims.shape[1])
    top = -np.partition(-sims, k - 1, axis=1)[:, :k]
    top[~np.isfinite(top)] = -1.0  # fewer than k entries outside the group: count as opposites
    return top.mean(axis=1)


class Scorer:
    """score(window) = top-k mean cosine to the positive memory, minus `negative_weight`
    times the top-k mean cosine to the negative memory (when there is one): a window is
    credited for being closer to the target than to the known other sounds."""

    def __init__(self, positives: np.ndarray, negatives: np.ndarray, top_k: int, negative_weight: float):
        self.top_k, self.negative_weight = top_k, negative_weight
        self.pos_index = build_index(positives)
        use_negatives = negative_weight > 0 and len(negatives) > 0
        self.neg_index = build_index(negatives) if use_negatives else None

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, dim) unit embeddings -> (n,) scores."""
        s = top_k_mean(self.pos_index, embeddings, self.top_k)
        if self.neg_index is not None:
            s = s - self.negative_weight * top_k_mean(self.neg_index, embeddings, self.top_k)
        return s


def nearest_groups(scores: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """(m,) bool: the windows of the `n` groups (voices) whose mean score is highest.
    scores, groups: (m,) window scores and integer group ids."""
    ids, inverse = np.unique(groups, return_inverse=True)
    mean = np.bincount(inverse, weights=scores) / np.bincount(inverse)
    nearest = np.argsort(-mean, kind="stable")[:n]
    return np.isin(inverse, nearest)


@dataclass(frozen=True)
class Calibration:
    threshold: float
    rule: str  # "best F1" or "precision >= X"
    precision: float  # expected on the validation windows at the threshold
    recall: float
    f1: float
    n_positive: int
    n_negative: int
    edge_threshold: float  # the lower quartile of the target's scores: a window that looks like the target
    target_share: float  # of a film's time, that weighted the classes


def calibrate_threshold(pos_scores: np.ndarray, neg_scores: np.ndarray, rule: str = "f1",
                        target_precision: float = 0.95,
                        target_share: float = TrainParams.target_share,
                        impostor_scores: np.ndarray | None = None,
                        impostor_share: float = TrainParams.impostor_share,
                        edge_quantile: float = TrainParams.edge_quantile,
                        f1_tolerance: float = 0.0) -> Calibration:
    """Pick the threshold that maximises F1 (rule "f1"), or the lowest threshold whose
    precision reaches `target_precision` (rule "precision"), on validation window scores.
    With `f1_tolerance`, rule "f1" takes every threshold whose F1 is within it of the best as
    as good, and the one nearest the middle of their range: where F1 is flat over a wide
    range (a target with look-alikes among the impostors), the best point is noise.

    Positives are weighted so that both classes count as much as they would in a film
    where the target speaks `target_share` of the time, whatever the sample sizes.
    `impostor_scores` (windows of unseen voices) take `impostor_share` of the other
    windows' weight, the user's negatives the rest, whatever the sample sizes.
    The edge threshold (segments.to_segments) is the positives' `edge_quantile` quantile.
    """
    imp = np.zeros(0) if impostor_scores is None or impostor_share == 0 else np.asarray(impostor_scores)
    if len(pos_scores) == 0 or len(neg_scores) == 0:
        raise ValueError("calibration needs positive and negative validation scores")
    if not 0 < target_share < 1:
        raise ValueError(f"target share must be between 0 and 1, not {target_share}")
    if not 0 <= impostor_share < 1:
        raise ValueError(f"impostor share must be in [0, 1), not {impostor_share}")
    u = impostor_share if len(imp) else 0.0
    scores = np.concatenate([pos_scores, neg_scores, imp])
    is_pos = np.concatenate([np.ones(len(pos_scores), bool), np.zeros(len(neg_scores) + len(imp), bool)])
    w = np.concatenate([np.full(len(pos_scores), target_share / len(pos_scores)),
                        np.full(len(neg_scores), (1 - target_share) * (1 - u) / len(neg_scores)),
                        np.full(len(imp), (1 - target_share) * u / max(len(imp), 1))])
    order = np.argsort(-scores, kind="stable")
    scores, is_pos, w = scores[order], is_pos[order], w[order]
    tp = np.cumsum(np.where(is_pos, w, 0.0))  # threshold at scores[i]: windows 0..i positive
    fp = np.cumsum(np.where(is_pos, 0.0, w))
    total_pos = tp[-1]
    precision = tp / np.maximum(tp + fp, 1e-12)
    recall = tp / total_pos
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    # Only cut between distinct scores.
    last_of_run = np.r_[scores[1:] != scores[:-1], True]
    if rule == "f1":
        i = int(np.argmax(np.where(last_of_run, f1, -1.0)))
        if f1_tolerance > 0:
            near = np.flatnonzero(last_of_run & (f1 >= f1[i] - f1_tolerance))
            i = int(near[np.argmin(np.abs(scores[near] - (scores[near].max() + scores[near].min()) / 2))])
        name = f"middle of best F1 ± {f1_tolerance:g}" if f1_tolerance > 0 else "best F1"
    elif rule == "precision":
        ok = np.flatnonzero(last_of_run & (precision >= target_precision))
        i = int(ok[-1]) if len(ok) else int(np.argmax(np.where(last_of_run, precision, -1.0)))
        name = f"precision >= {target_precision:g}"
    else:
        raise ValueError(f"unknown threshold rule {rule!r}: use 'f1' or 'precision'")
    # Put the threshold half-way to the next lower score: robust to small score shifts.
    below = scores[i + 1] if i + 1 < len(scores) else scores[i] - 0.01
    threshold = float((scores[i] + below) / 2)
    edge_threshold = float(np.quantile(pos_scores, edge_quantile))
    return Calibration(threshold, name, float(precision[i]), float(recall[i]), float(f1[i]),
                       len(pos_scores), len(neg_scores) + len(imp), edge_threshold, target_share)


def tagged_negative_share(c: Calibration) -> float:
    """The share of the other (non-target) calibration weight that scores above c.threshold,
    recovered from the calibration's precision and recall: the target's windows carry
    `target_share` of the weight, the others (negatives and impostors) the rest."""
    tagged_pos = c.recall * c.target_share  # weight of the target windows above the threshold
    tagged_neg = tagged_pos * (1.0 - c.precision) / max(c.precision, 1e-12)
    return min(1.0, tagged_neg / (1.0 - c.target_share))


def calibration_problem(c: Calibration, max_negative_share: float = TrainParams.max_negative_share) -> str:
    """Why a calibrated threshold must not be used, or "" when it may: a threshold above
    every target score (it tags none of the target), or one that more than
    `max_negative_share` of the negative windows score above (it tags film-like sound of
    every kind; a threshold below every score is one)."""
    if c.recall <= 0.0:
        return (f"the calibrated threshold {c.threshold:.3f} is above every score of the target's "
                f"{c.n_positive} calibration windows: it would tag none of them")
    share = tagged_negative_share(c)
    if share > max_negative_share:
        return (f"the calibrated threshold {c.threshold:.3f} is exceeded by {share:.0%} of the {c.n_negative} other "
                "film-like calibration windows: it would tag most other sound, not the target")
    return ""
