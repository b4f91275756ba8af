"""acc / acc_norm from per-candidate log-likelihoods, grouped tables and bootstrap intervals."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from eval.mcq_data import LETTERS, MCQItem
from eval.prompts import Candidates


@dataclasses.dataclass(frozen=True)
class QuestionResult:
    item: MCQItem
    scores: tuple[float, ...]  # summed log p per candidate
    norm_scores: tuple[float, ...]  # per UTF-8 byte of the candidate text
    pred: tuple[int, ...]  # predicted option indices (acc)
    pred_norm: tuple[int, ...]  # predicted option indices (acc_norm)

    @property
    def correct(self) -> bool:
        return self.pred == self.item.answers

    @property
    def correct_norm(self) -> bool:
        return self.pred_norm == self.item.answers

    def as_dict(self) -> dict[str, Any]:
        it = self.item
        return {
            "id": it.id, "language": it.language, "subdomain": it.subdomain, "multi": it.is_multi,
            "gold": it.answer_letters, "pred": ",".join(LETTERS[i] for i in self.pred),
            "pred_norm": ",".join(LETTERS[i] for i in self.pred_norm),
            "correct": self.correct, "correct_norm": self.correct_norm,
            "scores": [round(s, 5) for s in self.scores],
        }


def _predict(scores: np.ndarray, cands: Candidates) -> tuple[int, ...]:
    order = np.argsort(-scores, kind="stable")[: cands.pick]
    return tuple(sorted({i for c in order for i in cands.sets[c]}))


def score_question(item: MCQItem, cands: Candidates, loglik: Sequence[float]) -> QuestionResult:
    """acc: the highest summed log-likelihood (top ``pick`` in topk multi-answer mode); acc_norm: the
    same after dividing by each candidate's UTF-8 byte length (lm-eval's ``acc_norm``)."""
    ll = np.asarray(loglik, np.float64)
    if ll.shape != (len(cands.texts),):
        raise ValueError(f"{item.id}: {ll.shape} scores for {len(cands.texts)} candidates")
    nbytes = np.array([max(len(t.encode("utf-8")), 1) for t in cands.texts], np.float64)
    norm = ll / nbytes
    return QuestionResult(item, tuple(ll.tolist()), tuple(norm.tolist()), _predict(ll, cands), _predict(norm, cands))


def bootstrap_ci(
    values: Sequence[float], n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    x = np.asarray(values, np.float64)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


GROUPINGS: dict[str, Callable[[QuestionResult], str]] = {
    "overall": lambda r: "all",
    "language": lambda r: r.item.language,
    "answer_type": lambda r: "multi" if r.item.is_multi else "single",
    "subdomain": lambda r: r.item.subdomain,
}


def chance(item: MCQItem) -> float:
    """Accuracy of a uniform random guess of an answer set of the gold size."""
    return 1.0 / math.comb(len(item.options), len(item.answers))


def _row(rs: Sequence[QuestionResult], n_resamples: int, seed: int) -> dict[str, Any]:
    acc = [float(r.correct) for r in rs]
    accn = [float(r.correct_norm) for r in rs]
    return {
        "count": len(rs),
        "acc": float(np.mean(acc)), "acc_ci": bootstrap_ci(acc, n_resamples, seed=seed),
        "acc_norm": float(np.mean(accn)), "acc_norm_ci": bootstrap_ci(accn, n_resamples, seed=seed),
        "chance": float(np.mean([chance(r.item) for r in rs])),
    }


def summarize(
    results: Sequence[QuestionResult], n_resamples: int = 1000, seed: int = 0, max_groups: int = 12
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{grouping: {group: {count, acc, acc_ci, acc_norm, acc_norm_ci, chance}}}``, groups sorted by
    count. A grouping with more than ``max_groups`` groups keeps the largest ``max_groups - 1`` and
    folds the rest into one ``other (N groups)`` row; the unfolded table is kept as ``<name>_all``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, key in GROUPINGS.items():
        groups: dict[str, list[QuestionResult]] = {}
        for r in results:
            groups.setdefault(key(r), []).append(r)
        ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        full = {g: _row(rs, n_resamples, seed) for g, rs in ordered}
        if len(ordered) <= max_groups:
            out[name] = full
            continue
        head, tail = ordered[: max_groups - 1], ordered[max_groups - 1 :]
        folded = {g: full[g] for g, _ in head}
        folded[f"other ({len(tail)} groups)"] = _row([r for _, rs in tail for r in rs], n_resamples, seed)
        out[name] = folded
        out[f"{name}_all"] = full
    return out
