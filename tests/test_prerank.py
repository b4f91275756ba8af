"""Pre-ranker: features, training on a multi-feature synthetic task, and the top-k cut."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from ranking.prerank import (
    FEATURE_NAMES,
    NUM_FEATURES,
    PreRanker,
    candidate_features,
    fit_preranker,
)

Q, L, F, POS = 96, 40, 6, 4


def _task(seed: int = 0):
    """Relevance depends on three features (two with opposite signs); one feature is badly scaled."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((Q, L, F)).astype(np.float32)
    x[..., 3] = x[..., 3] * 50 + 7
    logit = 1.5 * x[..., 0] + 1.0 * x[..., 1] - 1.0 * x[..., 2] + 0.3 * rng.standard_normal((Q, L))
    where = np.ones((Q, L), bool)
    where[:, 34:] = False  # padded candidates
    logit = np.where(where, logit, -np.inf)
    labels = np.zeros((Q, L), np.float32)
    np.put_along_axis(labels, np.argsort(-logit, axis=1)[:, :POS], 1.0, axis=1)
    return x, labels, where


def _recall(idx: np.ndarray, labels: np.ndarray) -> float:
    return float(
        np.mean([labels[i, idx[i][idx[i] >= 0]].sum() / labels[i].sum() for i in range(len(idx))])
    )


def _best_single_feature(x, labels, where, keep):
    best = 0.0
    for f in range(x.shape[-1]):
        for sign in (1, -1):
            s = np.where(where, sign * x[..., f], -np.inf)
            best = max(best, _recall(np.argsort(-s, axis=1)[:, :keep], labels))
    return best


@pytest.mark.parametrize(
    "hidden,loss,ratio",
    # ListMLE over ~30 tied negatives has a large irreducible term (~log 30!), so it drops less.
    [
        ((16,), "softmax", 0.8),
        ((), "softmax", 0.8),
        ((16,), "listmle", 0.95),
        ((16,), "pointwise", 0.8),
    ],
)
def test_trains_and_beats_single_feature(hidden, loss, ratio):
    x, labels, where = _task()
    tr, te = slice(0, 64), slice(64, None)
    model = PreRanker(F, hidden, rngs=nnx.Rngs(0))
    history = fit_preranker(
        model,
        x[tr],
        labels[tr],
        where[tr],
        loss=loss,
        steps=150,
        learning_rate=3e-2,
        batch_lists=32,
    )
    assert np.mean(history[-10:]) < ratio * np.mean(history[:3])
    idx, scores = model.top(x[te], where[te], keep=POS)
    assert idx.shape == (Q - 64, POS) and np.isfinite(scores).all()
    got = _recall(idx, labels[te])
    single = _best_single_feature(x[te], labels[te], where[te], POS)
    assert got > single + 0.15, (got, single)


def test_top_respects_mask_and_pads():
    model = PreRanker(3, (), rngs=nnx.Rngs(1))
    feats = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    where = np.array([True, False, True, False, False, True])
    idx, sc = model.top(feats, where, keep=5)
    assert set(idx[:3]) == {0, 2, 5} and (idx[3:] == -1).all()
    assert np.all(np.diff(sc[:3]) <= 0) and np.isneginf(sc[3:]).all()
    full, _ = model.top(feats, keep=2)
    assert full.shape == (2,)


def test_candidate_features():
    docs = ["The router default gateway is 10.0.0.1", "cats", ""]
    f = candidate_features(
        "default gateway router", docs, np.array([0.8, 0.1, 0.3]), np.array([2.0, 0.0, 0.0])
    )
    assert f.shape == (3, NUM_FEATURES) == (3, len(FEATURE_NAMES))
    col = {n: f[:, i] for i, n in enumerate(FEATURE_NAMES)}
    np.testing.assert_allclose(col["dense_cosine"], [0.8, 0.1, 0.3])
    np.testing.assert_allclose(col["dense_rank_rr"], [1, 1 / 3, 1 / 2])
    np.testing.assert_allclose(col["bm25_max_norm"], [1, 0, 0])
    np.testing.assert_allclose(col["query_coverage"], [1, 0, 0])
    # Union {the, router, default, gateway, is, 10}.
    np.testing.assert_allclose(col["jaccard"], [3 / 6, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(col["doc_len_log"], np.log1p([6, 1, 0]), rtol=1e-6)
    assert np.isfinite(f).all()
    assert candidate_features("q", [], np.zeros(0)).shape == (0, NUM_FEATURES)
    with pytest.raises(ValueError):
        candidate_features("q", ["a"], np.zeros(2))
