"""Few-shot demonstration selectors: ``random``, ``dense`` (MiniLM + sharded MIPS) and ``pistis``.

``make_selector(kind, pool, queries, ...)`` returns an object with ``select(query_index, k) -> list[int]``
(indices into ``pool``, in prompt order) and ``description`` (what really chose the demonstrations,
recorded in ``results.json``). A pool item with the query's id or question text is never chosen, so
the evaluation set can be its own demonstration pool (leave-one-out).

Prompt order: every selector that ranks puts the most relevant demonstration LAST, right before the
question (dense: most similar last; pistis: the ranker's order, best last; pistis without a ranker:
the pre-ranking top-k, reversed so that its best is last too). When a prompt does not fit the
model, the harness drops demonstrations from the front, i.e. the least relevant ones.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from jax.sharding import Mesh

from eval.mcq_data import LETTERS, MCQItem

DEMO_KINDS: tuple[str, ...] = ("random", "dense", "pistis")
log = logging.getLogger(__name__)


class DemoSelector(Protocol):
    description: str

    def select(self, query_index: int, k: int) -> list[int]: ...


def item_text(item: MCQItem) -> str:
    """The text a retriever sees for a question: the question and its options."""
    return item.question + "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options))


class _Base:
    def __init__(self, pool: Sequence[MCQItem], queries: Sequence[MCQItem]):
        if not pool:
            raise ValueError("the demonstration pool is empty")
        self.pool = list(pool)
        self.queries = list(queries)
        by_id: dict[str, list[int]] = {}
        by_text: dict[str, list[int]] = {}
        for i, it in enumerate(self.pool):
            by_id.setdefault(it.id, []).append(i)
            by_text.setdefault(it.question, []).append(i)
        self._by_id, self._by_text = by_id, by_text

    def excluded(self, query_index: int) -> set[int]:
        q = self.queries[query_index]
        return set(self._by_id.get(q.id, ())) | set(self._by_text.get(q.question, ()))

    def _check_k(self, query_index: int, k: int) -> set[int]:
        excl = self.excluded(query_index)
        if k > len(self.pool) - len(excl):
            raise ValueError(f"asked for {k} demonstrations but the pool has only {len(self.pool) - len(excl)} usable")
        return excl


class RandomSelector(_Base):
    """Uniformly random demonstrations, deterministic per (seed, query index)."""

    def __init__(self, pool: Sequence[MCQItem], queries: Sequence[MCQItem], seed: int = 0):
        super().__init__(pool, queries)
        self.seed = seed
        self.description = f"random(seed={seed})"

    def select(self, query_index: int, k: int) -> list[int]:
        if k <= 0:
            return []
        excl = self._check_k(query_index, k)
        rng = np.random.default_rng([self.seed, query_index])
        eligible = np.array([i for i in range(len(self.pool)) if i not in excl])
        return [int(i) for i in rng.choice(eligible, size=k, replace=False)]


class DenseSelector(_Base):
    """Nearest pool questions by MiniLM cosine similarity (sharded MIPS); the most similar goes last,
    right before the question."""

    def __init__(
        self,
        pool: Sequence[MCQItem],
        queries: Sequence[MCQItem],
        mesh: Mesh | None = None,
        encoder: Any = None,
        progress: bool = False,
    ):
        super().__init__(pool, queries)
        from ranking.matching import DenseIndex

        if encoder is None:
            from jaxrl_desktop.encoder import SentenceEncoder

            encoder = SentenceEncoder.from_pretrained(mesh=mesh)
        pool_emb = encoder.encode([item_text(it) for it in self.pool], progress=progress, desc="embed pool")
        self._query_emb = encoder.encode([item_text(it) for it in self.queries], progress=progress,
                                         desc="embed queries")
        self.index = DenseIndex(pool_emb, mesh=mesh)
        self.description = "dense(MiniLM cosine, most similar last)"

    def select(self, query_index: int, k: int) -> list[int]:
        if k <= 0:
            return []
        excl = self._check_k(query_index, k)
        res = self.index.search(self._query_emb[query_index : query_index + 1], k + len(excl), exact=True)
        picked = [int(i) for i in res.indices[0] if int(i) not in excl][:k]
        return picked[::-1]

    def select_all(self, k: int) -> list[list[int]]:
        """All queries at once (one batched search)."""
        if k <= 0:
            return [[] for _ in self.queries]
        extra = max((len(self.excluded(q)) for q in range(len(self.queries))), default=0)
        for q in range(len(self.queries)):
            self._check_k(q, k)
        res = self.index.search(self._query_emb, min(k + extra, len(self.pool)), exact=True)
        out = []
        for q, row in enumerate(res.indices):
            excl = self.excluded(q)
            out.append([int(i) for i in row if int(i) not in excl][:k][::-1])
        return out


class PistisSelector(_Base):
    """Demonstrations chosen and ordered by the Pistis-RAG cascade (``ranking.cascade.PistisCascade``).

    The query's own pool items (leave-one-out) are masked out of its candidate list BEFORE the
    ranker scores it, so the list-aware ranker sees the list as it would be without them and its top
    ``k`` in its own prompt order (best last) is used as is. Without a ranker the cascade gives the
    pre-ranking order (best first); it is reversed here so the best demonstration is last, as with
    every other selector, and ``description`` says ``prerank fallback``.
    """

    def __init__(
        self,
        pool: Sequence[MCQItem],
        queries: Sequence[MCQItem],
        mesh: Mesh | None = None,
        ranker_dir: str | None = None,
        encoder: Any = None,
        progress: bool = False,
    ):
        super().__init__(pool, queries)
        cascade_cls = load_pistis_cascade()
        kw: dict[str, Any] = {"progress": progress} if progress else {}
        self.cascade = cascade_cls([item_text(it) for it in self.pool], ranker_dir=ranker_dir, mesh=mesh,
                                   encoder=encoder, **kw)
        self.progress = progress
        self.has_ranker = self.cascade.has_ranker
        if self.has_ranker:
            step = None
            try:
                from ranking.ranker import read_ranker_info

                step = read_ranker_info(ranker_dir).get("step")
            except (ImportError, OSError, ValueError):
                pass
            self.description = f"pistis(ranker={ranker_dir}" + (f", step {step})" if step is not None else ")")
        else:
            self.description = "pistis(prerank fallback: no ranker_dir; pre-ranking top-k, best last)"
            log.warning(
                "--demos pistis without --ranker_dir: demonstrations are the matching + pre-ranking top-k, "
                "NOT ordered by a trained ranker (recorded as %r in results.json); train one with "
                "`python -m ranking.train` and pass --ranker_dir", self.description,
            )

    def select(self, query_index: int, k: int) -> list[int]:
        if k <= 0:
            return []
        excl = self._check_k(query_index, k)
        return self._rank([item_text(self.queries[query_index])], [excl], k)[0]

    def select_all(self, k: int) -> list[list[int]]:
        """All queries in one batched cascade call."""
        if k <= 0:
            return [[] for _ in self.queries]
        excls = [self._check_k(q, k) for q in range(len(self.queries))]
        return self._rank([item_text(it) for it in self.queries], excls, k)

    def _rank(self, texts: list[str], excls: list[set[int]], k: int) -> list[list[int]]:
        cands = self.cascade.candidates(texts, progress=self.progress)
        for row, excl in enumerate(excls):  # leave-one-out before ranking, not after
            if excl:
                cands.where[row] &= ~np.isin(cands.indices[row], list(excl))
        picked = self.cascade.order(cands, k)
        return [self._usable(p, excl, k) for p, excl in zip(picked, excls, strict=True)]

    def _usable(self, picked: Sequence[int], excl: set[int], k: int) -> list[int]:
        """The ``k`` best usable items of one cascade list, most relevant last. The cascade's list is
        in ranker prompt order (best LAST) with a ranker and in pre-ranking order (best first)
        without one, so the best ``k`` are its last ``k`` or its first ``k`` (then reversed)."""
        out = [int(i) for i in picked if int(i) not in excl]
        out = out[-k:] if self.has_ranker else out[:k][::-1]
        if len(out) < k:
            raise RuntimeError(f"PistisCascade returned {len(out)} usable demonstrations, {k} needed")
        return out


def load_pistis_cascade() -> type:
    """``ranking.cascade.PistisCascade``, or a clear error if that module is not there yet."""
    if importlib.util.find_spec("ranking.cascade") is None:
        raise RuntimeError(
            "--demos pistis needs ranking/cascade.py (PistisCascade), which is not in this checkout yet; "
            "use --demos random or --demos dense"
        )
    module = importlib.import_module("ranking.cascade")
    if not hasattr(module, "PistisCascade"):
        raise RuntimeError("ranking.cascade has no PistisCascade class; use --demos random or --demos dense")
    return module.PistisCascade


def make_selector(
    kind: str,
    pool: Sequence[MCQItem],
    queries: Sequence[MCQItem],
    *,
    seed: int = 0,
    mesh: Mesh | None = None,
    encoder: Any = None,
    ranker_dir: str | None = None,
    progress: bool = False,
) -> DemoSelector:
    """A selector of kind ``random``, ``dense`` or ``pistis`` over ``pool`` for ``queries``."""
    if kind == "random":
        return RandomSelector(pool, queries, seed)
    if kind == "dense":
        return DenseSelector(pool, queries, mesh=mesh, encoder=encoder, progress=progress)
    if kind == "pistis":
        return PistisSelector(pool, queries, mesh=mesh, ranker_dir=ranker_dir, encoder=encoder, progress=progress)
    raise ValueError(f"unknown demonstration selector {kind!r}; choose one of {DEMO_KINDS}")
