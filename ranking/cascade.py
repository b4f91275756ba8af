"""The Pistis-RAG cascade: matching -> pre-ranking -> list-aware ranking -> an ORDERED k-shot list.

``PistisCascade(pool_texts, ranker_dir=...).select(query, k)`` returns pool indices in PROMPT order:
the first index is the first demonstration in the prompt, the last one sits right before the
question. With a ranker this is the ranker's order (:func:`ranking.ranker.order_from_scores`, best
item last); without one it is the pre-ranking order (best first), and a log line says so.

A ranker folder (``python -m ranking.train``) holds ``ranker.json``, the orbax parameter checkpoint
and, when the training data came with one, ``preranker.npz`` (the pre-ranker whose scores the ranker
was trained on); otherwise the untrained default pre-ranker is used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jax.sharding import Mesh

from jaxrl_desktop.mesh import make_mesh
from ranking.candidates import CandidateGenerator, Candidates, load_preranker
from ranking.index import TEXTS as TEXTS_FILE
from ranking.matching import DenseIndex
from ranking.prerank import PreRanker
from ranking.ranker import RankerScorer, load_ranker, order_from_scores

log = logging.getLogger(__name__)
PRERANKER_FILE = "preranker.npz"


class PistisCascade:
    """Matching (sharded dense MIPS + BM25) -> pre-ranking -> ranker over a pool of demonstrations."""

    def __init__(
        self,
        pool_texts: list[str],
        ranker_dir: str | None = None,
        mesh=None,
        encoder=None,
        n_match: int = 100,
        n_prerank: int = 30,
        *,
        embeddings: np.ndarray | None = None,
        ids: Sequence[str] | None = None,
        preranker: PreRanker | None = None,
        bm25: bool = True,
        progress: bool = False,
    ):
        if not pool_texts:
            raise ValueError("PistisCascade needs a non-empty pool of texts")
        self.pool_texts = list(pool_texts)
        self.mesh: Mesh = mesh if mesh is not None else make_mesh(data=1, fsdp=-1, tensor=1)
        if encoder is None:
            from jaxrl_desktop.encoder import SentenceEncoder

            encoder = SentenceEncoder.from_pretrained()
        self.encoder = encoder
        if embeddings is None:
            embeddings = encoder.encode(self.pool_texts, progress=progress, desc="embed pool")
        if len(embeddings) != len(self.pool_texts):
            raise ValueError(f"{len(embeddings)} embeddings for {len(self.pool_texts)} pool texts")
        self.index = DenseIndex(embeddings, ids, mesh=self.mesh)
        sparse = None
        if bm25:
            from ranking.sparse import BM25Index

            try:
                sparse = BM25Index(self.pool_texts, self.index.ids)
            except ValueError as e:  # e.g. no indexable word in the whole pool
                log.warning("PistisCascade: BM25 disabled (%s); matching is dense only", e)
        self.ranker_dir = None if ranker_dir is None else Path(ranker_dir)
        if preranker is None and self.ranker_dir is not None and (self.ranker_dir / PRERANKER_FILE).exists():
            preranker = load_preranker(self.ranker_dir / PRERANKER_FILE)
        self.generator = CandidateGenerator(self.index, self.pool_texts, encoder, preranker, sparse,
                                            n_match=n_match, n_prerank=n_prerank)
        self.scorer: RankerScorer | None = None
        if self.ranker_dir is None:
            log.warning("PistisCascade: no ranker_dir given; select() falls back to the pre-ranking "
                        "order (best first)")
        else:
            model, info = load_ranker(self.ranker_dir, self.mesh)
            if model.cfg.embed_dim != self.index.dim:
                raise ValueError(f"ranker in {self.ranker_dir} expects {model.cfg.embed_dim}-d "
                                 f"embeddings but the encoder gives {self.index.dim}-d")
            self.scorer = RankerScorer(model, self.mesh)
            log.info("PistisCascade: ranker from %s (step %s)", self.ranker_dir, info.get("step"))

    @classmethod
    def from_index(
        cls,
        index_dir: str | Path,
        ranker_dir: str | None = None,
        mesh=None,
        encoder=None,
        n_match: int = 100,
        n_prerank: int = 30,
        **kw,
    ) -> PistisCascade:
        """A cascade over an index folder from ``python -m ranking.index`` (no re-embedding)."""
        from ranking.index import load_index

        emb, ids, manifest = load_index(index_dir)
        texts = load_texts(index_dir, ids, manifest)
        return cls(texts, ranker_dir, mesh, encoder, n_match, n_prerank, embeddings=emb, ids=ids, **kw)

    @property
    def has_ranker(self) -> bool:
        return self.scorer is not None

    def candidates(
        self, queries: Sequence[str], include: Sequence[Sequence[int]] | None = None, progress: bool = False
    ) -> Candidates:
        """Matched and pre-ranked candidate lists (pre-ranking order) with ranker features."""
        return self.generator.generate(list(queries), include, progress=progress)

    def rank(self, queries: Sequence[str], k: int) -> list[list[int]]:
        """Ordered pool indices (prompt order) for each query."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        cands = self.candidates(queries)
        return self.order(cands, k)

    def order(self, cands: Candidates, k: int) -> list[list[int]]:
        """Prompt-order pool indices from candidate lists (ranker order, or pre-ranking order)."""
        out = []
        if self.scorer is None:
            for row, where in zip(cands.indices, cands.where, strict=True):
                out.append([int(i) for i in row[where][:k]])
            return out
        scores, _ = self.scorer(cands.inputs())
        for i in range(len(cands.indices)):
            pos = order_from_scores(scores[i], cands.where[i], k)
            out.append([int(cands.indices[i, p]) for p in pos])
        return out

    def select(self, query: str, k: int) -> list[int]:
        """Up to ``k`` pool indices in prompt order (first = first demonstration in the prompt)."""
        return self.rank([query], k)[0]


def load_texts(index_dir: str | Path, ids: Sequence[str], manifest: dict) -> list[str]:
    """Texts of an index folder: ``texts.json`` (written by the index CLI), else the recorded corpus."""
    d = Path(index_dir)
    if (d / TEXTS_FILE).exists():
        texts = json.loads((d / TEXTS_FILE).read_text(encoding="utf-8"))
        if not isinstance(texts, list) or len(texts) != len(ids):
            raise ValueError(f"{d / TEXTS_FILE} does not hold {len(ids)} texts; rebuild the index")
        return [str(t) for t in texts]
    corpus = (manifest.get("metadata") or {}).get("corpus")
    if corpus and Path(corpus).exists():
        from ranking.index import read_corpus

        c_ids, c_texts = read_corpus(corpus)
        if c_ids == list(ids):
            return c_texts
    raise FileNotFoundError(
        f"{d} has no {TEXTS_FILE} and its corpus ({corpus}) is missing or changed; rebuild it with "
        f"`python -m ranking.index --corpus CORPUS --out {d}`"
    )
