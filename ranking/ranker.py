"""A list-aware transformer ranker (RankFormer-style) that turns a candidate list into an ORDERED k-shot list.

Inputs per list: the query's MiniLM embedding ``query_emb [E]`` and, per candidate, its MiniLM embedding
``item_emb [L, E]``, dense score and pre-ranking score, plus a validity mask. Each item token is
``W_e e + W_x (e * q) + W_q q + W_s s`` (``s`` = dense, z(dense), z(prerank) within the list); there is
no positional input, so item scores are permutation-equivariant. A learned list token (plus ``W_l q``)
is prepended; the encoder blocks are the shared decoder :class:`~jaxrl_desktop.models.decoder.Block`
with all RoPE positions 0 and a full (non-causal) mask over valid items. Outputs: a score per item and
a list logit (how likely the list leads to a good answer; trained on list-wide labels).

Prompt-order convention (:func:`order_from_scores`): the ``k`` highest-scoring items are shown in
ASCENDING score order, so the best-scored item sits last, right before the question. Any ordered
k-subset can be expressed this way, so the ranker can learn whatever order the LLM prefers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrl_desktop.mesh import make_mesh
from jaxrl_desktop.model_configs import DecoderConfig
from jaxrl_desktop.models.decoder import Block
from jaxrl_desktop.models.layers import RMSNorm, param
from jaxrl_desktop.sharding import batch_sharding, constrain, create_sharded, param_shardings

FORMAT = "pistis-ranker"
VERSION = 1
NUM_SCALARS = 3
INPUT_KEYS: tuple[str, ...] = ("query_emb", "item_emb", "dense", "prerank", "where")


@dataclasses.dataclass(frozen=True)
class RankerConfig:
    """Ranker shapes. ``embed_dim`` must match the encoder (MiniLM: 384)."""

    embed_dim: int = 384
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not a multiple of num_heads={self.num_heads}")
        if min(self.embed_dim, self.d_model, self.num_layers, self.num_heads, self.mlp_dim) < 1:
            raise ValueError(f"all ranker sizes must be >= 1: {self}")

    def block_config(self) -> DecoderConfig:
        """The shared decoder-block config used for the ranker's encoder layers."""
        return DecoderConfig(
            vocab_size=8, hidden_size=self.d_model, num_layers=self.num_layers,
            num_heads=self.num_heads, num_kv_heads=self.num_heads,
            head_dim=self.d_model // self.num_heads, intermediate_size=self.mlp_dim,
            init_std=self.init_std, name="ranker",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ranker config fields {unknown}; known: {sorted(names)}")
        return cls(**dict(d))


def _zscore(x: jax.Array, where: jax.Array) -> jax.Array:
    n = jnp.maximum(where.sum(-1, keepdims=True), 1)
    mean = jnp.sum(jnp.where(where, x, 0.0), -1, keepdims=True) / n
    var = jnp.sum(jnp.where(where, (x - mean) ** 2, 0.0), -1, keepdims=True) / n
    return jnp.where(where, (x - mean) / jnp.sqrt(var + 1e-6), 0.0)


def score_features(dense: jax.Array, prerank: jax.Array, where: jax.Array) -> jax.Array:
    """Per-item scalars ``[..., L, 3]``: dense score, and dense / prerank z-scored within the list."""
    where = where.astype(bool)
    dense = jnp.where(where, dense, 0.0)
    prerank = jnp.where(where, prerank, 0.0)
    return jnp.stack([dense, _zscore(dense, where), _zscore(prerank, where)], axis=-1)


class Ranker(nnx.Module):
    """``Ranker(cfg, rngs=nnx.Rngs(0))(query_emb, item_emb, dense, prerank, where) -> (scores [B, L], list_logit [B])``."""

    def __init__(self, cfg: RankerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        e, d, f32 = cfg.embed_dim, cfg.d_model, jnp.float32
        fan_in = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")
        zeros = nnx.initializers.zeros
        self.item_proj = param(rngs, fan_in, (e, d), (None, "embed"), f32)
        self.inter_proj = param(rngs, fan_in, (e, d), (None, "embed"), f32)
        self.query_proj = param(rngs, fan_in, (e, d), (None, "embed"), f32)
        self.scalar_proj = param(rngs, fan_in, (NUM_SCALARS, d), (None, "embed"), f32)
        self.item_bias = param(rngs, zeros, (d,), ("embed",), f32)
        self.list_token = param(rngs, nnx.initializers.normal(1.0), (d,), ("embed",), f32)
        self.list_query_proj = param(rngs, fan_in, (e, d), (None, "embed"), f32)
        bcfg = cfg.block_config()
        self.blocks = nnx.List([Block(bcfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(d, 1e-6, param_dtype=f32, rngs=rngs)
        self.head_hidden = param(rngs, fan_in, (d, d), ("embed", "mlp"), f32)
        self.head_hidden_bias = param(rngs, zeros, (d,), ("mlp",), f32)
        self.head_out = param(rngs, fan_in, (d, 1), ("mlp", None), f32)
        self.list_head = param(rngs, fan_in, (d, 1), ("embed", None), f32)
        self.list_bias = param(rngs, zeros, (1,), (None,), f32)

    def __call__(
        self,
        query_emb: jax.Array,
        item_emb: jax.Array,
        dense: jax.Array,
        prerank: jax.Array,
        where: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        where = where.astype(bool)
        q = query_emb.astype(jnp.float32)
        e = jnp.where(where[..., None], item_emb.astype(jnp.float32), 0.0)
        s = score_features(dense.astype(jnp.float32), prerank.astype(jnp.float32), where)
        items = (
            e @ self.item_proj[...]
            + (e * q[:, None, :]) @ self.inter_proj[...]
            + (q @ self.query_proj[...])[:, None, :]
            + s @ self.scalar_proj[...]
            + self.item_bias[...]
        )
        lst = self.list_token[...] + q @ self.list_query_proj[...]
        x = jnp.concatenate([lst[:, None, :], items], axis=1)  # [B, 1 + L, d]
        x = constrain(x, ("batch", "length", None))
        valid = jnp.concatenate([jnp.ones_like(where[:, :1]), where], axis=1)
        mask = jnp.broadcast_to(valid[:, None, :], (x.shape[0], x.shape[1], x.shape[1]))
        positions = jnp.zeros(x.shape[:2], jnp.int32)  # no order information: equivariant
        for block in self.blocks:
            x, _ = block(x, positions, mask)
        h = self.norm(x)
        hidden = jax.nn.gelu(h[:, 1:] @ self.head_hidden[...] + self.head_hidden_bias[...])
        scores = (hidden @ self.head_out[...])[..., 0]
        list_logit = (h[:, 0] @ self.list_head[...] + self.list_bias[...])[..., 0]
        return scores, list_logit


# ------------------------------------------------------------------------------ ordering
def order_from_scores(scores: np.ndarray, where: np.ndarray | None, k: int) -> np.ndarray:
    """Prompt order of the top-``k`` valid items of one list: ascending score (best item LAST).

    Returns item indices ``[min(k, n_valid)]``; ties keep the lower index earlier in the ranking.
    """
    s = np.asarray(scores, np.float64)
    valid = np.ones(s.shape, bool) if where is None else np.asarray(where, bool)
    s = np.where(valid, s, -np.inf)
    n = int(min(k, valid.sum()))
    top = np.argsort(-s, kind="stable")[:n]  # best first
    return top[::-1].copy()


def position_labels(orders: jax.Array, num_items: int) -> jax.Array:
    """Graded labels ``[..., L]`` for ordered lists ``orders [..., K]`` (item ids, -1 = padding).

    The item at prompt position ``p`` (0-based) gets ``p + 1``; items not in the list get 0. Sorting by
    these labels and applying :func:`order_from_scores` reproduces the list.
    """
    onehot = orders[..., None] == jnp.arange(num_items)  # [..., K, L]
    pos = jnp.arange(1, orders.shape[-1] + 1, dtype=jnp.float32)
    return jnp.sum(onehot * pos[:, None], axis=-2)


# ------------------------------------------------------------------------- on the mesh
def create_ranker(cfg: RankerConfig, mesh: Mesh | None = None, seed: int = 0) -> Ranker:
    """A ranker initialised directly sharded on ``mesh`` (default: all devices on ``fsdp``)."""
    mesh = mesh if mesh is not None else make_mesh(data=1, fsdp=-1, tensor=1)
    return create_sharded(lambda: Ranker(cfg, rngs=nnx.Rngs(seed)), mesh)


def _pow2(n: int) -> int:
    return 1 << max(0, (max(n, 1) - 1).bit_length())


class RankerScorer:
    """Jitted, sharded inference: ``scorer(inputs) -> (scores [B, L], list_prob [B])`` as NumPy.

    Params live on ``mesh`` with their logical-axis shardings; batches are padded to a power-of-two
    number of lists (a multiple of the batch shards) and of items, so few shapes get compiled.
    """

    def __init__(self, model: Ranker, mesh: Mesh):
        self.mesh = mesh
        self.cfg = model.cfg
        self.graphdef, params = nnx.split(model)
        self.param_shardings = param_shardings(params, mesh)
        self.params = jax.device_put(params, self.param_shardings)
        shards = [batch_sharding(mesh, nd) for nd in (2, 3, 2, 2, 2)]
        self._shards = dict(zip(INPUT_KEYS, shards, strict=True))
        self.batch_shards = int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))

        def apply(params: nnx.State, inputs: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
            scores, logit = nnx.merge(self.graphdef, params)(*(inputs[k] for k in INPUT_KEYS))
            return scores, jax.nn.sigmoid(logit)

        rep = NamedSharding(mesh, PartitionSpec())
        self._fn = jax.jit(apply, in_shardings=(self.param_shardings, self._shards),
                           out_shardings=(rep, rep))

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        b, n = np.asarray(inputs["dense"]).shape
        rows = -(-_pow2(b) // self.batch_shards) * self.batch_shards
        cols = max(8, _pow2(n))
        padded = pad_inputs(inputs, rows, cols)
        with jax.set_mesh(self.mesh):
            placed = {k: jax.device_put(padded[k], self._shards[k]) for k in INPUT_KEYS}
            scores, prob = self._fn(self.params, placed)
        return np.asarray(scores)[:b, :n], np.asarray(prob)[:b]


def pad_inputs(inputs: Mapping[str, np.ndarray], rows: int, cols: int) -> dict[str, np.ndarray]:
    """Zero-pad ranker inputs to ``rows`` lists and ``cols`` items (padding is masked out)."""
    b, n = np.asarray(inputs["dense"]).shape
    e = np.asarray(inputs["query_emb"]).shape[-1]
    out = {
        "query_emb": np.zeros((rows, e), np.float32),
        "item_emb": np.zeros((rows, cols, e), np.float32),
        "dense": np.zeros((rows, cols), np.float32),
        "prerank": np.zeros((rows, cols), np.float32),
        "where": np.zeros((rows, cols), bool),
    }
    out["query_emb"][:b] = inputs["query_emb"]
    out["item_emb"][:b, :n] = inputs["item_emb"]
    out["dense"][:b, :n] = inputs["dense"]
    out["prerank"][:b, :n] = inputs["prerank"]
    out["where"][:b, :n] = np.asarray(inputs["where"], bool)
    return out


# ------------------------------------------------------------------------- persistence
def save_ranker(
    directory: str | Path, model_or_params: Ranker | nnx.State, cfg: RankerConfig, step: int,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``ranker.json`` and an orbax checkpoint of the parameters under ``directory/params``."""
    from jaxrl_desktop.checkpoint import Checkpointer

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    params = model_or_params if isinstance(model_or_params, nnx.State) else nnx.state(model_or_params)
    ckpt = Checkpointer(d / "params", keep=1, async_save=False)
    try:
        ckpt.save(int(step), params, {"ranker": cfg.to_dict()})
    finally:
        ckpt.close()
    info = {"format": FORMAT, "version": VERSION, "config": cfg.to_dict(), "step": int(step),
            **(meta or {})}
    tmp = d / "ranker.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(d / "ranker.json")
    return d


def read_ranker_info(directory: str | Path) -> dict[str, Any]:
    """``ranker.json`` of a ranker folder, with a clear error if it is missing or foreign."""
    d = Path(directory)
    path = d / "ranker.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{d} is not a ranker folder (no ranker.json); train one with "
            "`python -m ranking.train --config=configs/ranker.py --config.workdir=DIR`"
        )
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} folder ({info.get('format')!r})")
    return info


def load_ranker(directory: str | Path, mesh: Mesh | None = None) -> tuple[Ranker, dict[str, Any]]:
    """Restore a ranker saved by :func:`save_ranker` straight onto ``mesh`` -> (model, ranker.json)."""
    from jaxrl_desktop.checkpoint import Checkpointer
    from jaxrl_desktop.sharding import abstract_model

    info = read_ranker_info(directory)
    cfg = RankerConfig.from_dict(info["config"])
    mesh = mesh if mesh is not None else make_mesh(data=1, fsdp=-1, tensor=1)
    graphdef, abstract = abstract_model(lambda: Ranker(cfg, rngs=nnx.Rngs(0)), mesh)
    ckpt = Checkpointer(Path(directory) / "params", keep=1, async_save=False)
    try:
        got = ckpt.restore_latest(abstract)
    finally:
        ckpt.close()
    if got is None:
        raise FileNotFoundError(f"{directory}/params holds no readable ranker checkpoint")
    _, params, _ = got
    return nnx.merge(graphdef, params), info
