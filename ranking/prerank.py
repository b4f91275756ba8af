"""Pre-ranking: a cheap NNX scorer over (query, candidate) features that cuts the matched set.

``candidate_features`` builds ``[L, F]`` features for one query's candidates (dense cosine, BM25,
ranks, lengths, lexical overlap); ``PreRanker`` standardises them and scores with a small MLP
(``hidden=()`` gives a linear model); ``fit_preranker`` trains it with optax on listwise labels;
``PreRanker.top`` keeps the best few dozen.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ranking import losses
from ranking.sparse import simple_tokens

FEATURE_NAMES: tuple[str, ...] = (
    "dense_cosine",
    "dense_rank_rr",
    "bm25_log1p",
    "bm25_max_norm",
    "bm25_rank_rr",
    "doc_len_log",
    "query_len_log",
    "len_ratio_log",
    "query_coverage",
    "jaccard",
)
NUM_FEATURES = len(FEATURE_NAMES)


def _rank_rr(x: np.ndarray) -> np.ndarray:
    """1 / (1 + rank) with rank 0 = highest value (ties by position)."""
    rank = np.empty(len(x), np.int64)
    rank[np.argsort(-x, kind="stable")] = np.arange(len(x))
    return 1.0 / (1.0 + rank)


def candidate_features(
    query: str,
    docs: Sequence[str],
    dense: np.ndarray,
    bm25: np.ndarray | None = None,
) -> np.ndarray:
    """Features ``[L, NUM_FEATURES]`` (order: ``FEATURE_NAMES``) of one query's candidates."""
    dense = np.asarray(dense, np.float64)
    bm25 = np.zeros(len(docs)) if bm25 is None else np.maximum(np.asarray(bm25, np.float64), 0.0)
    if len(dense) != len(docs) or len(bm25) != len(docs):
        raise ValueError("dense / bm25 scores must have one entry per candidate")
    q_toks = simple_tokens(query)
    q_set = set(q_toks)
    out = np.zeros((len(docs), NUM_FEATURES), np.float32)
    if not docs:
        return out
    d_toks = [simple_tokens(d) for d in docs]
    d_len = np.array([len(t) for t in d_toks], np.float64)
    cover = np.array([len(q_set & set(t)) / max(len(q_set), 1) for t in d_toks])
    jacc = np.array([len(q_set & set(t)) / max(len(q_set | set(t)), 1) for t in d_toks])
    bmax = bm25.max()
    out[:, 0] = dense
    out[:, 1] = _rank_rr(dense)
    out[:, 2] = np.log1p(bm25)
    out[:, 3] = bm25 / bmax if bmax > 0 else 0.0
    out[:, 4] = _rank_rr(bm25) if bmax > 0 else 0.0
    out[:, 5] = np.log1p(d_len)
    out[:, 6] = np.log1p(len(q_toks))
    out[:, 7] = np.log((1.0 + d_len) / (1.0 + len(q_toks)))
    out[:, 8] = cover
    out[:, 9] = jacc
    return out


class FeatureStat(nnx.Variable):
    """Non-trainable feature standardisation statistics."""


class PreRanker(nnx.Module):
    """Standardise features, then an MLP (ReLU) -> one score per candidate. ``hidden=()`` = linear."""

    def __init__(
        self, num_features: int = NUM_FEATURES, hidden: Sequence[int] = (32,), *, rngs: nnx.Rngs
    ):
        self.mean = FeatureStat(jnp.zeros((num_features,)))
        self.std = FeatureStat(jnp.ones((num_features,)))
        sizes = [num_features, *hidden]
        init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "mlp"))
        bias = nnx.with_partitioning(nnx.initializers.zeros_init(), ("mlp",))
        with nnx.use_eager_sharding(False):
            self.hidden = nnx.List(
                [
                    nnx.Linear(a, b, kernel_init=init, bias_init=bias, rngs=rngs)
                    for a, b in itertools.pairwise(sizes)
                ]
            )
            self.out = nnx.Linear(
                sizes[-1],
                1,
                kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("mlp", None)),
                bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (None,)),
                rngs=rngs,
            )

    def __call__(self, features: jax.Array) -> jax.Array:
        z = (features - self.mean[...]) / self.std[...]
        for layer in self.hidden:
            z = jax.nn.relu(layer(z))
        return self.out(z)[..., 0]

    def set_stats(self, features: np.ndarray, where: np.ndarray | None = None) -> None:
        """Set standardisation from the valid rows of ``features [..., F]``."""
        x = np.asarray(features, np.float64).reshape(-1, features.shape[-1])
        if where is not None:
            x = x[np.asarray(where, bool).reshape(-1)]
        self.mean[...] = jnp.asarray(x.mean(0), jnp.float32)
        self.std[...] = jnp.asarray(np.maximum(x.std(0), 1e-6), jnp.float32)

    def top(
        self, features: np.ndarray, where: np.ndarray | None = None, keep: int = 32
    ) -> tuple[np.ndarray, np.ndarray]:
        """Indices and scores of the best ``keep`` valid candidates per list (``-1`` / ``-inf`` pad)."""
        feats = np.asarray(features, np.float32)
        single = feats.ndim == 2
        if single:
            feats = feats[None]
            where = None if where is None else np.asarray(where)[None]
        valid = np.ones(feats.shape[:2], bool) if where is None else np.asarray(where, bool)
        s = np.asarray(_score(self, jnp.asarray(feats)), np.float64)
        s = np.where(valid, s, -np.inf)
        keep = min(keep, s.shape[1])
        idx = np.argsort(-s, axis=1, kind="stable")[:, :keep]
        sc = np.take_along_axis(s, idx, axis=1)
        idx = np.where(np.isfinite(sc), idx, -1)
        return (idx[0], sc[0]) if single else (idx, sc)


@nnx.jit
def _score(model: PreRanker, features: jax.Array) -> jax.Array:
    return model(features)


def list_loss(
    name: str, scores: jax.Array, labels: jax.Array, where: jax.Array, key: jax.Array | None = None
) -> jax.Array:
    """Training objective by name: ``softmax`` (normalised labels), ``listmle`` (ties broken with
    ``key``) or ``pointwise`` (BCE on ``labels > 0``)."""
    if name == "softmax":
        return losses.softmax_loss(scores, labels, where, normalize_labels=True)
    if name == "listmle":
        return losses.listmle_loss(scores, labels, where, key=key)
    if name == "pointwise":
        bce = optax.sigmoid_binary_cross_entropy(scores, (labels > 0).astype(scores.dtype))
        return jnp.sum(jnp.where(where, bce, 0.0)) / jnp.maximum(jnp.sum(where), 1)
    raise ValueError(f"unknown prerank loss {name!r}")


def fit_preranker(
    model: PreRanker,
    features: np.ndarray,
    labels: np.ndarray,
    where: np.ndarray | None = None,
    *,
    loss: str = "softmax",
    steps: int = 300,
    learning_rate: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_lists: int | None = None,
    seed: int = 0,
) -> list[float]:
    """Fit on ``features [Q, L, F]``, graded ``labels [Q, L]`` (higher = better); returns loss per step."""
    feats = jnp.asarray(features, jnp.float32)
    labels = jnp.asarray(labels, jnp.float32)
    mask = jnp.ones(labels.shape, bool) if where is None else jnp.asarray(where, bool)
    model.set_stats(np.asarray(feats), np.asarray(mask))
    opt = nnx.Optimizer(model, optax.adamw(learning_rate, weight_decay=weight_decay), wrt=nnx.Param)

    @nnx.jit
    def step(
        model: PreRanker,
        opt: nnx.Optimizer,
        x: jax.Array,
        y: jax.Array,
        m: jax.Array,
        key: jax.Array,
    ) -> jax.Array:
        def objective(model: PreRanker) -> jax.Array:
            return list_loss(loss, model(x), y, m, key)

        value, grads = nnx.value_and_grad(objective)(model)
        opt.update(model, grads)
        return value

    rng = np.random.default_rng(seed)
    keys = jax.random.split(jax.random.key(seed), steps)
    n = feats.shape[0]
    history = []
    for t in range(steps):
        if batch_lists and batch_lists < n:
            sel = jnp.asarray(rng.choice(n, batch_lists, replace=False))
            value = step(model, opt, feats[sel], labels[sel], mask[sel], keys[t])
        else:
            value = step(model, opt, feats, labels, mask, keys[t])
        history.append(float(value))
    return history
