"""Listwise training data for the ranker: candidate lists, shown (ordered) lists and their list-level labels.

One row per query: ranker inputs (``query_emb [E]``, ``item_emb [L, E]``, ``dense [L]``,
``prerank [L]``, ``where [L]``) and ``M`` shown lists: ``orders [M, K]`` (candidate indices in prompt
order, -1 = padding), ``rewards [M]`` and ``source [M]`` (``SOURCE_LLM``: the reward is the LLM's
log p(gold | demonstrations in that order, question); ``SOURCE_FEEDBACK``: the reward is a user's
list-wide feedback value, see :mod:`ranking.feedback`), with ``list_mask [M]``.
Stored as one ``.npz`` (no pickles).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SOURCE_LLM = 0
SOURCE_FEEDBACK = 1
_ARRAYS = ("query_emb", "item_emb", "dense", "prerank", "where", "orders", "rewards", "list_mask",
           "source", "item_ids")


@dataclasses.dataclass
class ListwiseData:
    query_emb: np.ndarray  # [Q, E] float32
    item_emb: np.ndarray  # [Q, L, E] float32
    dense: np.ndarray  # [Q, L] float32
    prerank: np.ndarray  # [Q, L] float32
    where: np.ndarray  # [Q, L] bool
    orders: np.ndarray  # [Q, M, K] int32, -1 = padding
    rewards: np.ndarray  # [Q, M] float32
    list_mask: np.ndarray  # [Q, M] bool
    source: np.ndarray  # [Q, M] int8
    item_ids: np.ndarray  # [Q, L] int64 pool indices, -1 = padding
    queries: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        q, l_ = self.dense.shape
        m, k = self.orders.shape[1:]
        want = {
            "query_emb": (q, self.query_emb.shape[-1]), "item_emb": (q, l_, self.query_emb.shape[-1]),
            "prerank": (q, l_), "where": (q, l_), "rewards": (q, m), "list_mask": (q, m),
            "source": (q, m), "item_ids": (q, l_), "orders": (q, m, k),
        }
        for name, shape in want.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"ListwiseData.{name} has shape {getattr(self, name).shape}, expected {shape}")
        if self.queries and len(self.queries) != q:
            raise ValueError(f"{len(self.queries)} query texts for {q} lists")
        bad = (self.orders >= l_) | (self.orders < -1)
        if bad.any():
            raise ValueError(f"orders hold item indices outside [-1, {l_})")
        valid_items = np.take_along_axis(self.where, np.maximum(self.orders, 0).reshape(q, -1), 1)
        if ((self.orders.reshape(q, -1) >= 0) & ~valid_items).any():
            raise ValueError("an ordered list points at a padded (invalid) candidate")

    def __len__(self) -> int:
        return self.dense.shape[0]

    @property
    def num_items(self) -> int:
        return self.dense.shape[1]

    def inputs(self, rows: np.ndarray | slice | None = None) -> dict[str, np.ndarray]:
        """The ranker inputs (``ranking.ranker.INPUT_KEYS``) of the selected rows."""
        rows = slice(None) if rows is None else rows
        return {k: getattr(self, k)[rows] for k in ("query_emb", "item_emb", "dense", "prerank", "where")}

    def batch(self, rows: np.ndarray | slice | None = None) -> dict[str, np.ndarray]:
        """Inputs plus labels for a train step."""
        rows = slice(None) if rows is None else rows
        out = self.inputs(rows)
        out.update({k: getattr(self, k)[rows] for k in ("orders", "rewards", "list_mask", "source")})
        return out

    def subset(self, rows: Sequence[int] | np.ndarray) -> ListwiseData:
        rows = np.asarray(rows, np.int64)
        kw = {k: getattr(self, k)[rows] for k in _ARRAYS}
        return ListwiseData(**kw, queries=[self.queries[i] for i in rows] if self.queries else [])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **{k: getattr(self, k) for k in _ARRAYS},
                 queries=np.asarray(self.queries, dtype=np.str_))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ListwiseData:
        """Read a file written by :meth:`save` (errors name the file and what is wrong)."""
        import zipfile

        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
            what = "not an .npz file" if isinstance(e, ValueError) else str(e)
            raise ValueError(f"{path}: cannot read listwise data ({what})") from e
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: cannot read listwise data (a single array, not an .npz file)")
        with z:
            missing = [k for k in _ARRAYS if k not in z.files]
            if missing:
                raise ValueError(f"{path}: not a listwise data file (missing {missing})")
            try:
                kw = {k: z[k] for k in _ARRAYS}
                queries = [str(x) for x in z["queries"]] if "queries" in z.files else []
            except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
                raise ValueError(f"{path}: cannot read listwise data ({e})") from e
        try:
            return cls(**kw, queries=queries)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


def concat(parts: Sequence[ListwiseData]) -> ListwiseData:
    """Stack datasets, padding items (L), shown lists (M) and list length (K) to the largest."""
    if not parts:
        raise ValueError("nothing to concatenate")
    e = {p.query_emb.shape[-1] for p in parts}
    if len(e) != 1:
        raise ValueError(f"datasets have different embedding sizes {sorted(e)}")
    L = max(p.num_items for p in parts)
    M = max(p.orders.shape[1] for p in parts)
    K = max(p.orders.shape[2] for p in parts)

    def pad(a: np.ndarray, shape: tuple[int, ...], fill) -> np.ndarray:
        out = np.full((a.shape[0], *shape), fill, a.dtype)
        out[(slice(None), *(slice(0, s) for s in a.shape[1:]))] = a
        return out

    fields = {
        "query_emb": lambda p: p.query_emb,
        "item_emb": lambda p: pad(p.item_emb, (L, p.item_emb.shape[-1]), 0),
        "dense": lambda p: pad(p.dense, (L,), 0),
        "prerank": lambda p: pad(p.prerank, (L,), 0),
        "where": lambda p: pad(p.where, (L,), False),
        "orders": lambda p: pad(p.orders, (M, K), -1),
        "rewards": lambda p: pad(p.rewards, (M,), 0),
        "list_mask": lambda p: pad(p.list_mask, (M,), False),
        "source": lambda p: pad(p.source, (M,), 0),
        "item_ids": lambda p: pad(p.item_ids, (L,), -1),
    }
    kw = {k: np.concatenate([f(p) for p in parts]) for k, f in fields.items()}
    queries = [q for p in parts for q in (p.queries or [""] * len(p))]
    return ListwiseData(**kw, queries=queries)
