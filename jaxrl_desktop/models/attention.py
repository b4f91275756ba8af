"""Grouped-query attention with optional QKV bias, and the KV cache used for decoding."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_desktop.model_configs import DecoderConfig
from jaxrl_desktop.models.layers import apply_rope, param
from jaxrl_desktop.sharding import constrain

NEG_INF = -1e30  # finite, so fully masked rows (padding queries) stay NaN-free


@flax.struct.dataclass
class KVCache:
    """Per-layer keys/values ``[B, S, K, D]`` plus which slots hold real tokens.

    Slots are filled left to right for the whole batch (``index`` is the next free slot); padding
    tokens are written too but marked invalid, so left- and right-padded prompts both work.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    valid: jax.Array  # [B, S] bool
    index: jax.Array  # [] int32

    @classmethod
    def init(cls, cfg: DecoderConfig, batch: int, max_len: int, dtype: jnp.dtype | None = None) -> KVCache:
        shape = (batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        dtype = dtype or cfg.compute_dtype
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
        return cls(k=zeros, v=zeros, valid=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]

    @property
    def lengths(self) -> jax.Array:
        """Number of real tokens cached per sequence, ``[B]`` int32."""
        return self.valid.sum(axis=-1, dtype=jnp.int32)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """``q[B,T,H,D]`` over ``k, v[B,S,K,D]`` (H a multiple of K) with ``mask[B,T,S]``; float32 softmax."""
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * d**-0.5
    scores = jnp.where(mask[:, None, None, :, :], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


class Attention(nnx.Module):
    """GQA self-attention with RoPE; writes into a KV cache slice when one is given."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        d, h, kv, hd, dt = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.weight_dtype
        init = nnx.initializers.normal(cfg.init_std)
        out_init = nnx.initializers.normal(cfg.init_std / (2 * cfg.num_layers) ** 0.5)
        self.cfg = cfg
        self.q = param(rngs, init, (d, h, hd), ("embed", "heads", "head_dim"), dt)
        self.k = param(rngs, init, (d, kv, hd), ("embed", "kv_heads", "head_dim"), dt)
        self.v = param(rngs, init, (d, kv, hd), ("embed", "kv_heads", "head_dim"), dt)
        self.o = param(rngs, out_init, (h, hd, d), ("heads", "head_dim", "embed"), dt)
        if cfg.qkv_bias:
            zeros = nnx.initializers.zeros
            self.q_bias = param(rngs, zeros, (h, hd), ("heads", "head_dim"), dt)
            self.k_bias = param(rngs, zeros, (kv, hd), ("kv_heads", "head_dim"), dt)
            self.v_bias = param(rngs, zeros, (kv, hd), ("kv_heads", "head_dim"), dt)
        else:
            self.q_bias = self.k_bias = self.v_bias = None

    def _project(self, x: jax.Array, kernel: nnx.Param, bias: nnx.Param | None) -> jax.Array:
        dt = self.cfg.compute_dtype
        y = jnp.einsum("btd,dhk->bthk", x, kernel[...].astype(dt))
        return y if bias is None else y + bias[...].astype(dt)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        kv: tuple[jax.Array, jax.Array] | None = None,
        index: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        cfg = self.cfg
        x = x.astype(cfg.compute_dtype)
        rope = dict(theta=cfg.rope_theta, rotary_dim=cfg.rotary_dim, interleaved=cfg.rope_interleaved)
        q = apply_rope(self._project(x, self.q, self.q_bias), positions, **rope)
        k = apply_rope(self._project(x, self.k, self.k_bias), positions, **rope)
        v = self._project(x, self.v, self.v_bias)
        q = constrain(q, ("batch", "length", "heads", None))
        if kv is not None:
            k_cache, v_cache = kv
            start = (0, index, 0, 0)
            k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), start)
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), start)
            kv = (k, v)
        out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
        out = jnp.einsum("bthk,hkd->btd", out, self.o[...].astype(cfg.compute_dtype))
        return out, kv
