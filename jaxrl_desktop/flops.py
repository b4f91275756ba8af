"""Model FLOPs per token and a measured matmul peak, for MFU."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from jaxrl_desktop.model_configs import DecoderConfig, matmul_param_count


def flops_per_token(cfg: DecoderConfig, seq_len: int, training: bool = True) -> float:
    """FLOPs per token: ``6N + 12 L H Dh T`` for a train step (fwd + bwd), a third of it for a
    forward pass. N = matmul parameters (:func:`matmul_param_count`); the attention term counts
    QK^T and AV over the full ``seq_len`` (no causal discount, as in the PaLM MFU convention)."""
    n = matmul_param_count(cfg)
    # forward attention: QK^T and AV each cost 2 * H * Dh * T flops per token per layer
    attn = 2 * 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    forward = 2 * n + attn
    return float(3 * forward if training else forward)


def mfu(tokens_per_second: float, cfg: DecoderConfig, seq_len: int, peak_flops: float, training: bool = True) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak."""
    return tokens_per_second * flops_per_token(cfg, seq_len, training) / peak_flops


@functools.cache
def measure_matmul_peak(n: int = 1024, dtype: str = "float32", repeats: int = 5, chain: int = 4) -> float:
    """Best observed FLOP/s of a jitted chain of ``n x n`` matmuls on the default device (cached)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype)) / n**0.5
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.dtype(dtype)) / n**0.5

    @jax.jit
    def run(x: jax.Array) -> jax.Array:
        for _ in range(chain):
            x = x @ b
        return x

    run(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 * chain / best


def measure_mesh_matmul_peak(mesh: jax.sharding.Mesh, n: int = 1024, repeats: int = 5, chain: int = 4) -> float:
    """Best observed FLOP/s of every device of ``mesh`` running its own jitted chain of ``n x n``
    float32 matmuls at the same time. On simulated CPU devices that share cores this is the honest
    denominator for MFU (a one-device peak times the device count would overstate it)."""
    from jax.sharding import NamedSharding, PartitionSpec

    devices = mesh.devices.size
    spec = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
    a = jax.device_put(jax.random.normal(jax.random.key(0), (devices, n, n)) / n**0.5, spec)
    b = jax.device_put(jax.random.normal(jax.random.key(1), (devices, n, n)) / n**0.5, spec)

    @functools.partial(jax.jit, out_shardings=spec)
    def run(x: jax.Array, w: jax.Array) -> jax.Array:
        for _ in range(chain):
            x = jnp.einsum("bij,bjk->bik", x, w)
        return x

    run(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 * chain * devices / best
