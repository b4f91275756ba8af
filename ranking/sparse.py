"""BM25 sparse matching (``bm25s``) and reciprocal-rank fusion with the dense matcher."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ranking.matching import SearchResult

# CJK ideographs become one token each; other words need >= 2 word characters (bm25s default).
TOKEN_PATTERN = r"(?u)[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|\b\w\w+\b"
_TOKEN_RE = re.compile(TOKEN_PATTERN)


def simple_tokens(text: str) -> list[str]:
    """Lower-cased word tokens (CJK characters split), as BM25 and the overlap features see them."""
    return _TOKEN_RE.findall(text.lower())


def _bm25s():
    """``bm25s``, with its logger quietened (it sets itself to DEBUG, which floods absl's stderr)."""
    import logging

    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def _tokenize(texts: Sequence[str], stopwords: str | None) -> list[list[str]]:
    bm25s = _bm25s()

    return bm25s.tokenize(
        list(texts),
        token_pattern=TOKEN_PATTERN,
        stopwords=stopwords or [],
        return_ids=False,
        show_progress=False,
    )


class BM25Index:
    """A ``bm25s`` BM25 index over ``texts`` with document ``ids``."""

    def __init__(
        self,
        texts: Sequence[str] | None,
        ids: Sequence[str] | None = None,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        stopwords: str | None = "en",
        _retriever=None,
    ):
        bm25s = _bm25s()

        self.stopwords = stopwords
        if _retriever is not None:
            self.retriever = _retriever
            self.ids = list(ids or [])
            return
        if not texts:
            raise ValueError("cannot build a BM25 index over an empty corpus")
        self.ids = [str(i) for i in range(len(texts))] if ids is None else [str(i) for i in ids]
        if len(self.ids) != len(texts):
            raise ValueError(f"{len(self.ids)} ids for {len(texts)} texts")
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index(_tokenize(texts, stopwords), show_progress=False)

    def __len__(self) -> int:
        return len(self.ids)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of ``query`` against every document -> float32 [N]."""
        toks = _tokenize([query], self.stopwords)[0]
        if not toks:  # only stopwords / no word characters: nothing to match
            return np.zeros(len(self), np.float32)
        return np.asarray(self.retriever.get_scores(toks), np.float32)

    def search(self, queries: Sequence[str], k: int = 10) -> SearchResult:
        """Top-``k`` documents per query (ties broken by row order; zero-score rows may appear)."""
        k = min(k, len(self))
        all_scores = (
            np.stack([self.scores(q) for q in queries]) if queries else np.zeros((0, len(self)))
        )
        idx = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        sc = np.take_along_axis(all_scores, idx, axis=1).astype(np.float32)
        return SearchResult(idx.astype(np.int64), sc, [[self.ids[j] for j in row] for row in idx])

    def save(self, out_dir: str | Path) -> Path:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(d), show_progress=False)
        (d / "ids.json").write_text(json.dumps({"ids": self.ids, "stopwords": self.stopwords}))
        return d

    @classmethod
    def load(cls, index_dir: str | Path) -> BM25Index:
        bm25s = _bm25s()
        d = Path(index_dir)
        meta = json.loads((d / "ids.json").read_text())
        retriever = bm25s.BM25.load(str(d), show_progress=False)
        return cls(None, meta["ids"], stopwords=meta["stopwords"], _retriever=retriever)


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]],
    k: int = 60,
    weights: Sequence[float] | None = None,
    top_k: int | None = None,
) -> list[tuple[str, float]]:
    """Fuse ranked id lists: ``score(d) = sum_r w_r / (k + rank_r(d))`` (ranks from 1), best first."""
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError("one weight per ranking")
    fused: dict[str, float] = {}
    for w, ranking in zip(weights, rankings, strict=True):
        for rank, doc in enumerate(ranking, 1):
            fused[doc] = fused.get(doc, 0.0) + w / (k + rank)
    order = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
    return order if top_k is None else order[:top_k]


def hybrid_search(
    dense: SearchResult,
    sparse: SearchResult,
    top_k: int,
    rrf_k: int = 60,
    weights: Sequence[float] = (1.0, 1.0),
) -> list[list[tuple[str, float]]]:
    """Per query, RRF of a dense and a sparse result list (same query order).

    Sparse hits with a zero BM25 score (no shared term) are dropped before fusion.
    """
    if len(dense.ids) != len(sparse.ids):
        raise ValueError("dense and sparse results cover different numbers of queries")
    out = []
    for d, s, sc in zip(dense.ids, sparse.ids, sparse.scores, strict=True):
        hits = [doc for doc, v in zip(s, sc, strict=True) if v > 0]
        out.append(reciprocal_rank_fusion([d, hits], k=rrf_k, weights=weights, top_k=top_k))
    return out
