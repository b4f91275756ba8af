"""FLOPs per token against XLA's own cost analysis; the measured matmul peak."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxrl_desktop.flops import flops_per_token, measure_matmul_peak, mfu
from jaxrl_desktop.model_configs import get_config, matmul_param_count, param_count
from jaxrl_desktop.models import Decoder, next_token_loss


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_flops_match_xla_cost_analysis(name):
    """XLA counts every flop of the compiled program (elementwise ops too): within a few % of ours."""
    cfg = get_config(name)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    b, t = 2, 128
    tokens = jnp.zeros((b, t), jnp.int32)
    fwd = jax.jit(lambda m, x: m(x)).lower(model, tokens).compile().cost_analysis()["flops"]
    grad = jax.jit(nnx.grad(lambda m, x: next_token_loss(m, {"tokens": x})[0])).lower(model, tokens)
    train = grad.compile().cost_analysis()["flops"]
    assert 0.98 < fwd / (b * t * flops_per_token(cfg, t, training=False)) < 1.08
    assert 0.98 < train / (b * t * flops_per_token(cfg, t)) < 1.10


def test_flop_formula_by_hand():
    cfg = get_config("glm4-9b")
    # matmul params exclude norms/biases and the embedding lookup but include the output head
    assert matmul_param_count(cfg) == param_count(cfg) - cfg.vocab_size * cfg.hidden_size - 40 * (2 * 4096 + 4608) - 4096
    n = matmul_param_count(cfg)
    assert flops_per_token(cfg, 4096) == 6 * n + 12 * 40 * 32 * 128 * 4096
    assert mfu(1000.0, cfg, 4096, peak_flops=flops_per_token(cfg, 4096) * 2000) == pytest.approx(0.5)


def test_measured_peak_is_plausible():
    peak = measure_matmul_peak(n=512, repeats=3)
    assert 1e8 < peak < 1e14
    assert measure_matmul_peak(n=512, repeats=3) == peak  # cached


def test_mesh_peak_counts_shared_cores_once():
    """Simulated CPU devices share the host's cores: the mesh-wide peak must not be the one-device
    peak times the device count (that overstates it and understates MFU)."""
    from jaxrl_desktop.flops import measure_mesh_matmul_peak
    from jaxrl_desktop.mesh import make_mesh

    mesh = make_mesh(data=len(jax.devices()), fsdp=1, tensor=1)
    peak = measure_mesh_matmul_peak(mesh, n=256, repeats=3)
    one = measure_matmul_peak(n=256, repeats=3)
    assert 1e8 < peak < 1e14
    if len(jax.devices()) >= 4 * (os.cpu_count() or 1):  # many more devices than cores
        assert peak < 0.75 * one * len(jax.devices())
