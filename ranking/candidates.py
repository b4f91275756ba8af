"""Matching + pre-ranking: turn queries into candidate lists with the features the ranker reads.

``CandidateGenerator.generate(queries)`` embeds the queries, runs the sharded dense search
(``n_match`` per query), adds BM25 scores if a BM25 index is given, computes pre-ranking features,
scores them with a :class:`~ranking.prerank.PreRanker` and keeps the best ``n_prerank``, in
pre-ranking order (best first). Pool indices listed in ``include`` are always kept (used to
featurise lists that users were shown).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ranking.matching import DenseIndex
from ranking.prerank import FEATURE_NAMES, NUM_FEATURES, PreRanker, candidate_features
from ranking.sparse import BM25Index

# Weights of the untrained default pre-ranker (a linear model on raw features).
DEFAULT_PRERANK_WEIGHTS: dict[str, float] = {
    "dense_cosine": 1.0,
    "bm25_max_norm": 0.3,
    "query_coverage": 0.2,
}


@dataclasses.dataclass
class Candidates:
    """Candidate lists of a batch of queries, in pre-ranking order (best first); -1 / False = padding."""

    indices: np.ndarray  # [Q, L] int64 pool indices
    dense: np.ndarray  # [Q, L] float32
    prerank: np.ndarray  # [Q, L] float32
    where: np.ndarray  # [Q, L] bool
    item_emb: np.ndarray  # [Q, L, E] float32
    query_emb: np.ndarray  # [Q, E] float32
    features: np.ndarray  # [Q, L, F] pre-ranking features

    def inputs(self) -> dict[str, np.ndarray]:
        """The ranker inputs (``ranking.ranker.INPUT_KEYS``)."""
        return {"query_emb": self.query_emb, "item_emb": self.item_emb, "dense": self.dense,
                "prerank": self.prerank, "where": self.where}


def default_preranker() -> PreRanker:
    """An untrained linear pre-ranker: ``dense + 0.3 * bm25/max + 0.2 * query coverage``."""
    model = PreRanker(NUM_FEATURES, hidden=(), rngs=nnx.Rngs(0))
    w = np.zeros((NUM_FEATURES, 1), np.float32)
    for name, value in DEFAULT_PRERANK_WEIGHTS.items():
        w[FEATURE_NAMES.index(name), 0] = value
    model.out.kernel[...] = jnp.asarray(w)
    model.out.bias[...] = jnp.zeros((1,))
    return model


def save_preranker(model: PreRanker, path: str | Path) -> Path:
    """Write a pre-ranker's weights and standardisation to one ``.npz`` (hidden sizes included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model))}
    hidden = [int(layer.kernel.shape[1]) for layer in model.hidden]
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, __hidden__=np.asarray(hidden, np.int64),
             __features__=np.asarray(FEATURE_NAMES, dtype=np.str_), **flat)
    tmp.replace(path)
    return path


def load_preranker(path: str | Path) -> PreRanker:
    """Read a pre-ranker written by :func:`save_preranker` (errors name the file and the problem)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            hidden = tuple(int(h) for h in z["__hidden__"])
            feats = tuple(str(f) for f in z["__features__"])
            arrays = {k: z[k] for k in z.files if not k.startswith("__")}
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a pre-ranker file ({e})") from e
    if feats != FEATURE_NAMES:
        raise ValueError(f"{path}: pre-ranker features {feats} differ from this version's {FEATURE_NAMES}")
    model = PreRanker(NUM_FEATURES, hidden=hidden, rngs=nnx.Rngs(0))
    state = nnx.state(model)
    for key, var in nnx.to_flat_state(state):
        name = "/".join(map(str, key))
        if name not in arrays or arrays[name].shape != var.get_value().shape:
            raise ValueError(f"{path}: missing or mis-shaped pre-ranker array {name!r}")
        var.set_value(jnp.asarray(arrays[name]))
    nnx.update(model, state)
    return model


class CandidateGenerator:
    """Matching (dense [+ BM25]) and pre-ranking over a pool of texts whose embeddings are in ``index``."""

    def __init__(
        self,
        index: DenseIndex,
        texts: Sequence[str],
        encoder,
        preranker: PreRanker | None = None,
        bm25: BM25Index | None = None,
        n_match: int = 100,
        n_prerank: int = 30,
        exact: bool = False,
    ):
        if len(texts) != len(index):
            raise ValueError(f"{len(texts)} texts for an index of {len(index)} rows")
        if n_match < 1 or n_prerank < 1:
            raise ValueError("n_match and n_prerank must be >= 1")
        self.index, self.texts, self.encoder = index, list(texts), encoder
        self.preranker = preranker if preranker is not None else default_preranker()
        self.bm25 = bm25
        self.n_match, self.n_prerank = n_match, min(n_prerank, n_match)
        self.exact = exact  # exact top-k instead of lax.approx_max_k in the matching search

    def generate(
        self,
        queries: Sequence[str],
        include: Sequence[Sequence[int]] | None = None,
        query_emb: np.ndarray | None = None,
        progress: bool = False,
    ) -> Candidates:
        """Candidate lists for ``queries`` (``progress``: tqdm bars for embedding and featurising)."""
        queries = list(queries)
        if query_emb is None:
            qe = self.encoder.encode(queries, progress=True, desc="embed queries") if progress else \
                self.encoder.encode(queries)
        else:
            qe = np.asarray(query_emb, np.float32)
        res = self.index.search(qe, self.n_match, exact=self.exact)
        emb = self.index.embeddings
        width = self.n_prerank + max((len(x) for x in include), default=0) if include else self.n_prerank
        width = min(width, len(self.index))
        q_n, e = len(queries), emb.shape[1]
        out = Candidates(
            indices=np.full((q_n, width), -1, np.int64), dense=np.zeros((q_n, width), np.float32),
            prerank=np.zeros((q_n, width), np.float32), where=np.zeros((q_n, width), bool),
            item_emb=np.zeros((q_n, width, e), np.float32), query_emb=qe.astype(np.float32),
            features=np.zeros((q_n, width, NUM_FEATURES), np.float32),
        )
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=q_n, desc="match + pre-rank", unit="query")
        for i, query in enumerate(queries):
            if bar is not None:
                bar.update(1)
            must = [int(j) for j in (include[i] if include else [])]
            bad = [j for j in must if not 0 <= j < len(self.index)]
            if bad:
                raise ValueError(f"query {i}: pool indices {bad} are outside [0, {len(self.index)})")
            idx = list(dict.fromkeys([*res.indices[i].tolist(), *must]))
            idx_arr = np.asarray(idx, np.int64)
            dense = emb[idx_arr] @ qe[i]
            bm = None if self.bm25 is None else self.bm25.scores(query)[idx_arr]
            feats = candidate_features(query, [self.texts[j] for j in idx], dense, bm)
            keep, scores = self.preranker.top(feats, keep=len(idx))
            order = [int(j) for j in keep if j >= 0]
            chosen = order[: self.n_prerank]
            must_pos = [idx.index(j) for j in must]
            chosen += [p for p in order if p in must_pos and p not in chosen]  # forced, prerank order
            chosen = sorted(chosen, key=order.index)[:width]
            n = len(chosen)
            pos = np.asarray(chosen, np.int64)
            score_of = dict(zip(keep.tolist(), scores.tolist(), strict=True))
            out.indices[i, :n] = idx_arr[pos]
            out.dense[i, :n] = dense[pos]
            out.prerank[i, :n] = [score_of[p] for p in chosen]
            out.where[i, :n] = True
            out.item_emb[i, :n] = emb[idx_arr[pos]]
            out.features[i, :n] = feats[pos]
        if bar is not None:
            bar.close()
        return out
