"""The decoder-only transformer (Llama/Qwen2/GLM-4 family) and log-probability helpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_desktop.model_configs import DecoderConfig
from jaxrl_desktop.models.attention import Attention, KVCache
from jaxrl_desktop.models.layers import MLP, RMSNorm, param
from jaxrl_desktop.sharding import constrain

_ACT = ("batch", "length", None)


class Block(nnx.Module):
    """Pre-norm residual block: attention then SwiGLU MLP."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        norm = dict(eps=cfg.norm_eps, param_dtype=cfg.weight_dtype, rngs=rngs)
        self.attn_norm = RMSNorm(cfg.hidden_size, **norm)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, **norm)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        kv: tuple[jax.Array, jax.Array] | None = None,
        index: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        h, kv = self.attn(self.attn_norm(x), positions, mask, kv, index)
        x = constrain(x + h.astype(x.dtype), _ACT)
        x = constrain(x + self.mlp(self.mlp_norm(x)).astype(x.dtype), _ACT)
        return x, kv


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Position of each token inside its packed segment (restarts at 0 where the id changes)."""
    t = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)[None, :]
    change = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
    )
    start = jax.lax.cummax(jnp.where(change, t, 0), axis=1)
    return t - start


def positions_from_mask(mask: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """Positions counting only real tokens (left padding gets position 0), plus ``offset[B]``."""
    pos = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
    return pos + jnp.asarray(offset, jnp.int32).reshape(-1, 1)


class Decoder(nnx.Module):
    """Decoder-only LM. ``Decoder(cfg, rngs=nnx.Rngs(0))``.

    ``model(tokens)`` returns float32 logits ``[B, T, V]``; with ``cache=`` it returns
    ``(logits, new_cache)`` (see :class:`KVCache`).
    """

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        init = nnx.initializers.normal(cfg.init_std)
        self.embed = param(rngs, init, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg.weight_dtype)
        self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, param_dtype=cfg.weight_dtype, rngs=rngs)
        if cfg.tie_embeddings:
            self.lm_head = None
        else:
            self.lm_head = param(rngs, init, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg.weight_dtype)

    def init_cache(self, batch: int, max_len: int, dtype: jnp.dtype | None = None) -> KVCache:
        return KVCache.init(self.cfg, batch, max_len, dtype)

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        *,
        segment_ids: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        """Forward pass.

        Args:
          tokens: ``[B, T]`` int token ids.
          positions: ``[B, T]`` RoPE positions; by default counted over real tokens (per segment
            with ``segment_ids``; continuing from the cached length with ``cache``).
          segment_ids: ``[B, T]`` packed-sequence ids, 0 = padding; tokens attend causally within
            their own segment only. Not combinable with ``cache``.
          attention_mask: ``[B, T]`` bool, False = padding (left or right). Same as
            ``segment_ids = attention_mask``.
          cache: a :class:`KVCache`; the T tokens are written at ``cache.index`` and attend to all
            valid cached tokens before them.
          return_hidden: return the final normed hidden states ``[B, T, D]`` instead of logits.
        """
        b, t = tokens.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool) if segment_ids is None else segment_ids != 0
        attention_mask = attention_mask.astype(bool)
        if cache is None:
            mask, positions = self._train_mask(t, attention_mask, segment_ids, positions)
        else:
            if segment_ids is not None:
                raise ValueError("segment_ids (packing) cannot be combined with a KV cache")
            if positions is None:
                positions = positions_from_mask(attention_mask, cache.lengths)
            valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, cache.index))
            slot = jnp.arange(cache.max_len)[None, None, :]
            mask = valid[:, None, :] & (slot <= cache.index + jnp.arange(t)[None, :, None])

        table = constrain(self.embed[...], ("vocab", None))  # FSDP: gather the embed dim before the lookup
        x = jnp.take(table, tokens, axis=0).astype(self.cfg.compute_dtype)
        x = constrain(x, _ACT)
        new_k, new_v = [], []
        for i, block in enumerate(self.layers):
            if cache is None:
                if self.cfg.remat:
                    x = nnx.remat(lambda blk, h, p, m: blk(h, p, m)[0])(block, x, positions, mask)
                else:
                    x, _ = block(x, positions, mask)
            else:
                x, (k, v) = block(x, positions, mask, (cache.k[i], cache.v[i]), cache.index)
                new_k.append(k)
                new_v.append(v)
        h = self.final_norm(x)
        out = h if return_hidden else self.logits(h)
        if cache is None:
            return out
        new_cache = KVCache(k=tuple(new_k), v=tuple(new_v), valid=valid, index=cache.index + t)
        return out, new_cache

    def logits(self, h: jax.Array) -> jax.Array:
        """Project hidden states ``[..., D]`` to float32 vocabulary logits."""
        dt = self.cfg.compute_dtype
        h = h.astype(dt)
        if self.lm_head is None:
            return jnp.einsum("...d,vd->...v", h, self.embed[...].astype(dt), preferred_element_type=jnp.float32)
        return jnp.einsum("...d,dv->...v", h, self.lm_head[...].astype(dt), preferred_element_type=jnp.float32)

    @staticmethod
    def _train_mask(
        t: int, attention_mask: jax.Array, segment_ids: jax.Array | None, positions: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        seg = attention_mask.astype(jnp.int32) if segment_ids is None else segment_ids
        if positions is None:
            positions = positions_from_mask(attention_mask) if segment_ids is None else positions_from_segments(seg)
        causal = jnp.tril(jnp.ones((t, t), bool))[None]
        mask = causal & (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
        return mask, positions


# ------------------------------------------------------------------------------ log-probs
def log_probs_from_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``log softmax(logits)[target]`` in float32: logits ``[..., V]``, targets ``[...]``."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def entropy_from_logits(logits: jax.Array) -> jax.Array:
    """Entropy of ``softmax(logits)`` over the last axis (float32)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def shift_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Token-aligned log-probs: ``out[:, t] = log p(tokens[:, t] | tokens[:, :t])``; ``out[:, 0] = 0``."""
    lp = log_probs_from_logits(logits[:, :-1], tokens[:, 1:])
    return jnp.concatenate([jnp.zeros_like(lp[:, :1]), lp], axis=1)


def token_logprobs(
    model: Decoder,
    tokens: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    positions: jax.Array | None = None,
) -> jax.Array:
    """Per-token log-probs of ``tokens`` under ``model``, aligned with ``tokens`` (see
    :func:`shift_logprobs`). Entries at padding, segment starts and column 0 are meaningless:
    multiply by a target mask (e.g. the action or answer tokens) before summing."""
    logits = model(tokens, positions, attention_mask=attention_mask, segment_ids=segment_ids)
    return shift_logprobs(logits, tokens)


def sequence_logprob(
    model: Decoder,
    tokens: jax.Array,
    target_mask: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``(sum of log p over target tokens [B], number of target tokens [B])`` — for MC scoring of
    continuations (acc = argmax sum, acc_norm = argmax sum / length)."""
    lp = token_logprobs(model, tokens, attention_mask=attention_mask)
    m = target_mask.astype(jnp.float32).at[:, 0].set(0.0)
    return jnp.sum(lp * m, axis=1), jnp.sum(m, axis=1)


def next_token_loss(model: Decoder, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-token cross-entropy. ``batch``: ``tokens[B, T]``; optional ``loss_mask[B, T]``
    (aligned with tokens: which tokens are predicted, e.g. action tokens), ``attention_mask`` or
    ``segment_ids``, ``positions``. Returns (loss, {"tokens": number of predicted tokens})."""
    tokens = batch["tokens"]
    lp = token_logprobs(
        model, tokens, attention_mask=batch.get("attention_mask"), segment_ids=batch.get("segment_ids"),
        positions=batch.get("positions"),
    )
    seg = batch.get("segment_ids")
    if seg is None:
        seg = batch.get("attention_mask", jnp.ones_like(tokens)).astype(jnp.int32)
    mask = batch.get("loss_mask", seg != 0).astype(bool)
    # a token is predictable only from a real token of its own segment
    same = jnp.concatenate([jnp.zeros_like(seg[:, :1], bool), (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] != 0)], 1)
    mask = (mask & same).astype(jnp.float32)
    n = jnp.maximum(mask.sum(), 1.0)
    return -jnp.sum(lp * mask) / n, {"tokens": mask.sum()}


def make_lm_loss(graphdef: nnx.GraphDef):
    """``loss_fn(params, batch)`` for :func:`jaxrl_desktop.sharding.make_train_step`."""

    def loss_fn(params: nnx.State, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        return next_token_loss(nnx.merge(graphdef, params), batch)

    return loss_fn
