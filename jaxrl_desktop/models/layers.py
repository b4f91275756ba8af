"""Building blocks: RMSNorm, rotary embeddings, SwiGLU MLP and a partitioned-parameter helper."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_desktop.model_configs import DecoderConfig


def param(
    rngs: nnx.Rngs,
    init: nnx.Initializer,
    shape: Sequence[int],
    axes: Sequence[str | None],
    dtype: jnp.dtype,
) -> nnx.Param:
    """A Param annotated with logical axis names (sharded later by ``jaxrl_desktop.sharding``)."""
    init = nnx.with_partitioning(init, tuple(axes), eager_sharding=False)
    return nnx.Param(init(rngs.params(), tuple(shape), dtype))


class RMSNorm(nnx.Module):
    """``x / rms(x) * scale`` computed in float32, returned in the input dtype."""

    def __init__(self, dim: int, eps: float, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def rope_frequencies(positions: jax.Array, rotary_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape ``positions.shape + (rotary_dim // 2,)`` (float32)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(
    x: jax.Array,
    positions: jax.Array,
    *,
    theta: float,
    rotary_dim: int,
    interleaved: bool = False,
) -> jax.Array:
    """Rotate the first ``rotary_dim`` features of ``x[B, T, H, D]`` by position ``positions[B, T]``.

    Non-interleaved pairs feature ``i`` with ``i + rotary_dim/2`` (Llama/Qwen); interleaved pairs
    ``2i`` with ``2i+1`` (GLM).
    """
    cos, sin = rope_frequencies(positions, rotary_dim, theta)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rot, rest = x[..., :rotary_dim].astype(jnp.float32), x[..., rotary_dim:]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(rot.shape)
    else:
        x1, x2 = jnp.split(rot, 2, axis=-1)
        out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return jnp.concatenate([out.astype(x.dtype), rest], axis=-1)


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(x @ gate) * (x @ up))``."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        d, f, dt = cfg.hidden_size, cfg.intermediate_size, cfg.weight_dtype
        init = nnx.initializers.normal(cfg.init_std)
        out_init = nnx.initializers.normal(cfg.init_std / (2 * cfg.num_layers) ** 0.5)
        self.dtype = cfg.compute_dtype
        self.gate = param(rngs, init, (d, f), ("embed", "mlp"), dt)
        self.up = param(rngs, init, (d, f), ("embed", "mlp"), dt)
        self.down = param(rngs, out_init, (f, d), ("mlp", "embed"), dt)

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = self.dtype
        x = x.astype(dt)
        gate = jnp.einsum("btd,df->btf", x, self.gate[...].astype(dt))
        up = jnp.einsum("btd,df->btf", x, self.up[...].astype(dt))
        return jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, self.down[...].astype(dt))
