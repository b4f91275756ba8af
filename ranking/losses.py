"""Listwise ranking losses: thin ``rax`` wrappers with boolean masks, plus list-level feedback losses.

Shapes: ``scores``, ``labels``, ``where`` are ``[..., L]``; ``where`` is a mask of valid items
(cast to bool; masked items never affect the loss or its gradient). Lists without any valid item
are ignored by the mean reduction.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import rax

Array = jax.Array
ReduceFn = Callable[..., Array] | None

# List-level feedback values: copying the answer endorses the list; regenerate / dislike reject it.
FEEDBACK: dict[str, float] = {"copy": 1.0, "regenerate": -1.0, "dislike": -1.0, "none": 0.0}


def _mask(where: Array | None) -> Array | None:
    return None if where is None else jnp.asarray(where).astype(jnp.bool_)


def softmax_loss(
    scores: Array,
    labels: Array,
    where: Array | None = None,
    *,
    weights: Array | None = None,
    normalize_labels: bool = False,
    reduce_fn: ReduceFn = jnp.mean,
) -> Array:
    """``rax.softmax_loss``: ``-sum_i y_i log softmax(s)_i`` over valid items.

    ``normalize_labels`` rescales labels to a distribution over the valid items first
    (all-zero lists then get a uniform target, as in ``rax.utils.normalize_probabilities``).
    """
    label_fn = rax.utils.normalize_probabilities if normalize_labels else (lambda a, where: a)
    return rax.softmax_loss(
        scores, labels, where=_mask(where), weights=weights, label_fn=label_fn, reduce_fn=reduce_fn
    )


def listmle_loss(
    scores: Array,
    labels: Array,
    where: Array | None = None,
    *,
    key: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
) -> Array:
    """``rax.listmle_loss``: Plackett-Luce negative log-likelihood of the label order.

    Pass a PRNG ``key`` to break label ties randomly (otherwise ties keep input order).
    """
    return rax.listmle_loss(scores, labels, key=key, where=_mask(where), reduce_fn=reduce_fn)


def position_discount(shape: tuple[int, ...], positions: Array | None = None) -> Array:
    """DCG-style weight ``1 / log2(2 + position)`` of each displayed item (position 0 = top)."""
    pos = jnp.broadcast_to(jnp.arange(shape[-1]), shape) if positions is None else positions
    return 1.0 / jnp.log2(2.0 + pos.astype(jnp.float32))


def list_aggregate(
    scores: Array, where: Array | None = None, positions: Array | None = None
) -> Array:
    """Position-discounted mean score of each shown list -> ``[...]`` (0 for an all-masked list)."""
    w = position_discount(scores.shape, positions)
    if where is not None:
        m = _mask(where)
        w = jnp.where(m, w, 0.0)
        scores = jnp.where(m, scores, 0.0)  # masked scores (even inf/nan) cannot leak in
    return jnp.sum(w * scores, axis=-1) / jnp.maximum(jnp.sum(w, axis=-1), 1e-9)


def _masked_reduce(loss: Array, valid: Array, reduce_fn: ReduceFn) -> Array:
    loss = jnp.where(valid, loss, 0.0)
    if reduce_fn is None:
        return loss
    if reduce_fn is jnp.mean:
        return jnp.sum(loss) / jnp.maximum(jnp.sum(valid), 1)
    return reduce_fn(loss, where=valid)


def list_feedback_loss(
    scores: Array,
    feedback: Array,
    where: Array | None = None,
    *,
    positions: Array | None = None,
    margin: float = 0.0,
    reduce_fn: ReduceFn = jnp.mean,
) -> Array:
    """Logistic loss on a list's aggregate score for feedback given to the whole list.

    ``feedback[...]`` is > 0 (copy: the shown list was good), < 0 (regenerate / dislike) or 0 (no
    signal, ignored). Loss per list: ``softplus(-sign(f) * (list_aggregate - margin))``, where the
    aggregate weights each item's score by its displayed position (``positions``; default: index).
    """
    y = jnp.sign(feedback).astype(scores.dtype)
    agg = list_aggregate(scores, where, positions)
    valid = y != 0
    if where is not None:
        valid = valid & jnp.any(_mask(where), axis=-1)
    return _masked_reduce(jax.nn.softplus(-y * (agg - margin)), valid, reduce_fn)


def pairwise_list_feedback_loss(
    scores: Array,
    feedback: Array,
    groups: Array,
    where: Array | None = None,
    *,
    positions: Array | None = None,
    reduce_fn: ReduceFn = jnp.mean,
) -> Array:
    """Pairwise logistic loss between shown lists of the same query (``groups``), scale-free.

    ``scores``: ``[B, L]``, ``feedback``/``groups``: ``[B]``. For every pair (a, b) in one group
    with ``feedback[a] > feedback[b]``: ``softplus(agg[b] - agg[a])``. Returns the mean over pairs
    (0 if there are none).
    """
    agg = list_aggregate(scores, where, positions)
    ok = jnp.ones_like(feedback, dtype=jnp.bool_)
    if where is not None:
        ok = jnp.any(_mask(where), axis=-1)
    pair = (
        (groups[:, None] == groups[None, :])
        & (feedback[:, None] > feedback[None, :])
        & ok[:, None]
        & ok[None, :]
    )
    loss = jax.nn.softplus(agg[None, :] - agg[:, None])  # row a preferred over column b
    return _masked_reduce(loss, pair, reduce_fn)
