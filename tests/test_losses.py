"""Listwise loss wrappers vs direct NumPy computations; masked items must have no effect."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ranking import losses

B, L = 5, 7


def _batch(seed: int):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((B, L)).astype(np.float32)
    labels = rng.permutation(B * L).reshape(B, L).astype(np.float32) % 4  # graded 0..3
    labels += rng.uniform(0, 0.5, (B, L)).astype(np.float32)  # distinct: no listmle tie ambiguity
    where = rng.uniform(size=(B, L)) < 0.7
    where[0] = False  # a fully masked list must be ignored
    where[1] = True
    return scores, labels, where


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - (np.log(np.sum(np.exp(x - x.max()))) + x.max())


def np_softmax(scores, labels, where, normalize=False):
    out = []
    for s, y, m in zip(scores, labels, where, strict=True):
        if not m.any():
            continue
        y = y[m].astype(np.float64)
        if normalize:
            y = y / y.sum() if y.sum() > 0 else np.full_like(y, 1 / len(y))
        out.append(-np.sum(y * _log_softmax(s[m])))
    return np.mean(out)


def np_listmle(scores, labels, where):
    out = []
    for s, y, m in zip(scores, labels, where, strict=True):
        if not m.any():
            continue
        s = s[m][np.argsort(-y[m], kind="stable")].astype(np.float64)
        out.append(-sum(s[i] - np.log(np.sum(np.exp(s[i:]))) for i in range(len(s))))
    return np.mean(out)


def _perturb_masked(scores, labels, where, seed=99):
    rng = np.random.default_rng(seed)
    s2, y2 = scores.copy(), labels.copy()
    s2[~where] = rng.uniform(-1e4, 1e4, (~where).sum())
    y2[~where] = rng.uniform(0, 100, (~where).sum())
    return s2, y2


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("normalize", [False, True])
def test_softmax_matches_numpy(seed, normalize):
    s, y, m = _batch(seed)
    got = losses.softmax_loss(s, y, m, normalize_labels=normalize)
    np.testing.assert_allclose(float(got), np_softmax(s, y, m, normalize), rtol=1e-5)
    unmasked = losses.softmax_loss(s, y, normalize_labels=normalize)
    np.testing.assert_allclose(
        float(unmasked), np_softmax(s, y, np.ones_like(m), normalize), rtol=1e-5
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_listmle_matches_numpy(seed):
    s, y, m = _batch(seed)
    np.testing.assert_allclose(float(losses.listmle_loss(s, y, m)), np_listmle(s, y, m), rtol=1e-5)


@pytest.mark.parametrize(
    "fn",
    [
        lambda s, y, m: losses.softmax_loss(s, y, m),
        lambda s, y, m: losses.softmax_loss(s, y, m, normalize_labels=True),
        lambda s, y, m: losses.listmle_loss(s, y, m),
        lambda s, y, m: losses.list_feedback_loss(s, jnp.array([1.0, -1, 1, 0, -1]), m),
    ],
    ids=["softmax", "softmax_norm", "listmle", "feedback"],
)
def test_masked_entries_have_no_effect(fn):
    s, y, m = _batch(3)
    s2, y2 = _perturb_masked(s, y, m)
    base = float(fn(s, y, m))
    assert np.isfinite(base)
    assert float(fn(s2, y2, m)) == pytest.approx(base, rel=1e-6)
    # A float 0/1 mask is treated as the boolean mask.
    assert float(fn(s, y, m.astype(np.float32))) == pytest.approx(base, rel=1e-6)
    grad = np.asarray(jax.grad(lambda x: fn(x, y2, m))(jnp.asarray(s2)))
    assert np.isfinite(grad).all()
    assert (grad[~m] == 0).all()
    assert np.abs(grad[m]).sum() > 0


def test_mask_matters():
    """Sanity: with a different mask the loss changes (the comparisons above can fail)."""
    s, y, m = _batch(4)
    m2 = m.copy()
    m2[1, 0] = False
    assert float(losses.softmax_loss(s, y, m)) != pytest.approx(
        float(losses.softmax_loss(s, y, m2))
    )
    assert float(losses.listmle_loss(s, y, m)) != pytest.approx(
        float(losses.listmle_loss(s, y, m2))
    )


def _np_agg(s, m, pos=None):
    pos = np.arange(s.shape[-1]) if pos is None else pos
    w = np.where(m, 1 / np.log2(2 + pos), 0.0)
    return (w * np.where(m, s, 0)).sum(-1) / np.maximum(w.sum(-1), 1e-9)


def test_list_feedback_matches_numpy():
    s, _, m = _batch(5)
    fb = np.array([1.0, -1.0, 1.0, 0.0, -1.0], np.float32)
    agg = _np_agg(s.astype(np.float64), m)
    valid = (fb != 0) & m.any(-1)
    expect = np.log1p(np.exp(-np.sign(fb) * (agg - 0.2)))[valid].mean()
    got = losses.list_feedback_loss(s, fb, m, margin=0.2)
    np.testing.assert_allclose(float(got), expect, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(losses.list_aggregate(s, m)), agg, rtol=1e-5, atol=1e-6)


def test_list_feedback_direction_and_positions():
    s = jnp.zeros((2, 4))
    fb = jnp.array([losses.FEEDBACK["copy"], losses.FEEDBACK["regenerate"]])
    g = np.asarray(jax.grad(lambda x: losses.list_feedback_loss(x, fb))(s))
    # Gradient descent raises a copied list and lowers a rejected one.
    assert (g[0] < 0).all() and (g[1] > 0).all()
    assert abs(g[0, 0]) > abs(g[0, 3])  # the top shown item carries more weight
    pos = jnp.array([[3, 2, 1, 0], [0, 1, 2, 3]])  # list 0 was shown in reverse order
    g2 = np.asarray(jax.grad(lambda x: losses.list_feedback_loss(x, fb, positions=pos))(s))
    assert abs(g2[0, 3]) > abs(g2[0, 0])
    assert float(losses.list_feedback_loss(s, jnp.zeros(2))) == 0.0  # no signal -> no loss


def test_pairwise_list_feedback_matches_numpy():
    rng = np.random.default_rng(6)
    s = rng.standard_normal((6, L)).astype(np.float32)
    m = rng.uniform(size=(6, L)) < 0.8
    m[:, 0] = True
    fb = np.array([1, -1, 0, 1, -1, -1], np.float32)
    groups = np.array([0, 0, 0, 1, 1, 2])
    agg = _np_agg(s.astype(np.float64), m)
    pairs = [(a, b) for a in range(6) for b in range(6) if groups[a] == groups[b] and fb[a] > fb[b]]
    expect = np.mean([np.log1p(np.exp(agg[b] - agg[a])) for a, b in pairs])
    got = losses.pairwise_list_feedback_loss(s, fb, groups, m)
    np.testing.assert_allclose(float(got), expect, rtol=1e-5)
    s2, _ = _perturb_masked(s, s, m)
    assert float(losses.pairwise_list_feedback_loss(s2, fb, groups, m)) == pytest.approx(
        float(got), rel=1e-6
    )
    assert float(losses.pairwise_list_feedback_loss(s, fb, np.arange(6), m)) == 0.0  # no pairs
