"""Sharded maximum-inner-product search over a dense index on the device mesh.

Index rows are sharded over the mesh axes of the ``index`` logical rule (padded to a multiple of
the shard count; padded rows score ``-inf`` and are never returned). Each shard runs a local
``lax.approx_max_k`` (or exact ``lax.top_k``) inside ``jax.shard_map``; the per-shard candidates
are all-gathered and reduced with a global ``lax.top_k``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from jaxrl_desktop.mesh import logical_to_spec, make_mesh, named_sharding, replicated
from ranking.index import load_index, save_index


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Top-k per query: row ``indices`` [Q, k], ``scores`` [Q, k] (descending) and document ``ids``."""

    indices: np.ndarray
    scores: np.ndarray
    ids: list[list[str]]


def numpy_search(
    queries: np.ndarray, embeddings: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact brute-force MIPS in NumPy (float64 scores) -> (indices, scores), for checks and benches."""
    s = np.asarray(queries, np.float64) @ np.asarray(embeddings, np.float64).T
    k = min(k, s.shape[1])
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(s, idx, axis=1)


def _pow2_at_most(n: int, cap: int) -> int:
    return min(1 << max(0, math.ceil(math.log2(max(n, 1)))), cap)


def _axes_of(spec: PartitionSpec) -> tuple[str, ...]:
    first = spec[0] if len(spec) else None
    if first is None:
        return ()
    return (first,) if isinstance(first, str) else tuple(first)


@functools.lru_cache(maxsize=64)
def _search_fn(
    mesh: Mesh, axes: tuple[str, ...], k_local: int, k: int, recall_target: float, exact: bool
) -> Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    rows = PartitionSpec(axes or None, None)
    vec = PartitionSpec(axes or None)

    def local(q: jax.Array, db: jax.Array, rowid: jax.Array) -> tuple[jax.Array, jax.Array]:
        s = jnp.einsum("qd,nd->qn", q, db, precision=lax.Precision.HIGHEST)
        s = jnp.where(rowid[None, :] >= 0, s, -jnp.inf)
        if exact:
            v, i = lax.top_k(s, k_local)
        else:
            v, i = lax.approx_max_k(s, k_local, recall_target=recall_target)
        gid = rowid[i]
        if axes:
            v = lax.all_gather(v, axes, axis=1, tiled=True, to="invarying")
            gid = lax.all_gather(gid, axes, axis=1, tiled=True, to="invarying")
        top, j = lax.top_k(v, k)
        return top, jnp.take_along_axis(gid, j, axis=1)

    fn = jax.shard_map(
        local, mesh=mesh, in_specs=(PartitionSpec(), rows, vec), out_specs=PartitionSpec()
    )
    return jax.jit(fn)


class DenseIndex:
    """An embedding matrix + ids placed on the mesh for sharded MIPS.

    ``DenseIndex.load(dir).search(query_vectors, k)`` or ``.search_texts(texts, encoder, k)``.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        ids: Sequence[str] | None = None,
        mesh: Mesh | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        emb = np.asarray(embeddings, np.float32)
        if emb.ndim != 2 or len(emb) == 0:
            raise ValueError(f"embeddings must be a non-empty [N, D] array, got {emb.shape}")
        self.ids = [str(i) for i in range(len(emb))] if ids is None else list(ids)
        if len(self.ids) != len(emb):
            raise ValueError(f"{len(self.ids)} ids for {len(emb)} rows")
        self.embeddings = emb
        self.metadata = metadata or {}
        self.mesh = mesh if mesh is not None else make_mesh(data=1, fsdp=-1, tensor=1)
        spec = logical_to_spec(("index", None), mesh=self.mesh)
        self.axes = _axes_of(spec)
        self.shards = math.prod(self.mesh.shape[a] for a in self.axes)
        n_pad = -(-len(emb) // self.shards) * self.shards
        padded = np.zeros((n_pad, emb.shape[1]), np.float32)
        padded[: len(emb)] = emb
        rowid = np.full((n_pad,), -1, np.int32)
        rowid[: len(emb)] = np.arange(len(emb), dtype=np.int32)
        self._db = jax.device_put(padded, named_sharding(self.mesh, ("index", None)))
        self._rowid = jax.device_put(rowid, named_sharding(self.mesh, ("index",)))
        self._rows_per_shard = n_pad // self.shards

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    @classmethod
    def load(
        cls, index_dir: str | Path, mesh: Mesh | None = None, verify: bool = True
    ) -> DenseIndex:
        """Load an index folder written by ``ranking.index`` (raises ``IndexCorruptError`` if damaged)."""
        emb, ids, manifest = load_index(index_dir, verify=verify)
        return cls(emb, ids, mesh=mesh, metadata=manifest)

    def save(self, index_dir: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        return save_index(
            index_dir, self.embeddings, self.ids, metadata or self.metadata.get("metadata")
        )

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        recall_target: float = 0.95,
        exact: bool = False,
        query_batch: int = 256,
    ) -> SearchResult:
        """Top-``k`` rows by inner product for each query vector ``[Q, D]`` (k is capped at N)."""
        q = np.asarray(queries, np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be [Q, {self.dim}], got {q.shape}")
        if k < 1:
            raise ValueError("k must be >= 1")
        k = min(k, len(self))
        k_local = min(k, self._rows_per_shard)
        fn = _search_fn(self.mesh, self.axes, k_local, k, float(recall_target), bool(exact))
        scores = np.zeros((len(q), k), np.float32)
        idx = np.zeros((len(q), k), np.int64)
        for s in range(0, len(q), query_batch):
            block = q[s : s + query_batch]
            n = _pow2_at_most(len(block), query_batch)
            pad = np.zeros((n, self.dim), np.float32)
            pad[: len(block)] = block
            v, i = fn(jax.device_put(pad, replicated(self.mesh)), self._db, self._rowid)
            scores[s : s + len(block)] = np.asarray(v)[: len(block)]
            idx[s : s + len(block)] = np.asarray(i)[: len(block)]
        if (idx < 0).any():  # cannot happen with k <= N; guards the padding invariant
            raise RuntimeError("search returned a padding row")
        return SearchResult(idx, scores, [[self.ids[j] for j in row] for row in idx])

    def search_texts(self, texts: Sequence[str], encoder, k: int = 10, **kw: Any) -> SearchResult:
        """Encode ``texts`` with a ``SentenceEncoder`` and search."""
        return self.search(encoder.encode(list(texts)), k, **kw)
