"""Sharded init and train step on simulated 4/8-device CPU meshes vs the 1-device run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxrl_desktop.mesh import make_mesh
from jaxrl_desktop.model_configs import get_config
from jaxrl_desktop.models import Decoder, make_lm_loss
from jaxrl_desktop.sharding import (
    batch_sharding,
    create_sharded,
    create_train_state,
    logical_axes_of,
    make_train_step,
    param_specs,
    shard_batch,
    spec_for_shape,
)

CFG = get_config("tiny")
STEPS = 3


def _factory():
    return Decoder(CFG, rngs=nnx.Rngs(0))


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, CFG.vocab_size, (8, 16)).astype(np.int32)
    mask = np.ones((8, 16), bool)
    mask[::2, :3] = False  # some left padding
    return {"tokens": tokens, "attention_mask": mask}


def _run(mesh) -> tuple[list[float], nnx.State]:
    optimizer = optax.adamw(3e-3, weight_decay=0.1)
    graphdef, state, shardings = create_train_state(_factory, optimizer, mesh)
    step = make_train_step(make_lm_loss(graphdef), optimizer, mesh, shardings,
                           {"tokens": batch_sharding(mesh), "attention_mask": batch_sharding(mesh)})
    losses = []
    for _ in range(STEPS):
        state, metrics = step(state, shard_batch(_batch(), mesh))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == STEPS
    return losses, state.params


@pytest.fixture(scope="module")
def reference():
    return _run(make_mesh(1, 1, 1, devices=jax.devices()[:1]))


@pytest.mark.parametrize("shape", [(2, 2, 1), (1, 2, 2), (2, 2, 2)])
def test_sharded_step_matches_single_device(shape, reference):
    ref_losses, ref_params = reference
    mesh = make_mesh(*shape)
    losses, params = _run(mesh)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert ref_losses[-1] < ref_losses[0]  # it trains
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(params),
                                 jax.tree_util.tree_leaves_with_path(ref_params), strict=True):
        # Adam turns reduction-order noise on near-zero gradients into lr-sized steps for a few
        # elements: allow that on single entries, but require near-equality on average.
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, atol=1e-4, err_msg=jax.tree_util.keystr(path))
        assert np.abs(a - b).mean() < 1e-6, jax.tree_util.keystr(path)


def test_params_are_sharded_as_the_rules_say():
    mesh = make_mesh(2, 2, 2)
    model = create_sharded(_factory, mesh)
    state = nnx.state(model)
    sizes = dict(mesh.shape)
    expected = {  # logical axes -> spec under the rules table on (data=2, fsdp=2, tensor=2)
        ("vocab", "embed"): P("tensor", "fsdp"),
        ("embed", "vocab"): P("fsdp", "tensor"),
        ("embed", "mlp"): P("fsdp", "tensor"),
        ("mlp", "embed"): P("tensor", "fsdp"),
        ("embed", "heads", "head_dim"): P("fsdp", "tensor"),
        ("embed", "kv_heads", "head_dim"): P("fsdp", "tensor"),
        ("heads", "head_dim", "embed"): P("tensor", None, "fsdp"),
        ("heads", "head_dim"): P("tensor"),
        ("kv_heads", "head_dim"): P("tensor"),
        ("norm",): P(),
    }
    seen = set()
    for path, var in jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        axes = logical_axes_of(var)
        assert axes is not None, f"{jax.tree_util.keystr(path)} has no logical axes"
        arr = var.get_value()
        assert arr.sharding.spec == expected[axes], (path, arr.sharding.spec)
        seen.add(axes)
        # every device holds exactly its block
        shard_shape = list(arr.shape)
        for i, entry in enumerate(arr.sharding.spec):
            for a in (entry,) if isinstance(entry, str) else (entry or ()):
                shard_shape[i] //= sizes[a]
        assert {s.data.shape for s in arr.addressable_shards} == {tuple(shard_shape)}
        assert len(arr.addressable_shards) == 8
    assert seen == set(expected)


def test_non_dividing_axes_are_replicated():
    mesh = make_mesh(1, 2, 4)
    # 2 KV heads cannot be split 4 ways: that dimension falls back to replication
    assert spec_for_shape(("embed", "kv_heads", "head_dim"), (64, 2, 16), mesh) == P("fsdp")
    assert spec_for_shape(("embed", "heads", "head_dim"), (64, 4, 16), mesh) == P("fsdp", "tensor")
    assert spec_for_shape(("batch", None), (3, 5), mesh) == P()
    abstract = nnx.state(nnx.eval_shape(_factory))
    specs = param_specs(abstract, mesh)
    assert specs["layers"][0]["attn"]["k"].get_value() == P("fsdp")


def test_batch_is_split_over_data_and_fsdp():
    mesh = make_mesh(2, 2, 2)
    batch = shard_batch({"tokens": jnp.arange(8 * 4).reshape(8, 4)}, mesh)["tokens"]
    assert batch.sharding.spec == P(("data", "fsdp"), None)
    assert {s.data.shape for s in batch.addressable_shards} == {(2, 4)}


def test_sampling_with_sharded_params_matches_unsharded():
    from jaxrl_desktop.sampling import SamplingConfig, sample

    sharded = create_sharded(_factory, make_mesh(2, 2, 2))
    plain = _factory()
    prompts = jnp.asarray(np.random.default_rng(0).integers(3, CFG.vocab_size, (8, 10)), jnp.int32)
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0, eos_id=-1)
    a = sample(plain, prompts, prompts > 0, jax.random.key(0), cfg)
    b = sample(sharded, prompts, prompts > 0, jax.random.key(0), cfg)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)


def test_glm4_9b_train_step_lowers_on_a_mesh():
    """The full-size sharded train step traces and lowers abstractly (no memory is allocated)."""
    from jaxrl_desktop.sharding import abstract_model, abstract_train_state, train_state_shardings

    mesh = make_mesh(2, 2, 2)
    cfg = get_config("glm4-9b")
    graphdef, abstract = abstract_model(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh)
    optimizer = optax.adamw(1e-4)
    shardings = train_state_shardings(abstract, optimizer, mesh)
    state = abstract_train_state(abstract, optimizer, shardings)
    mu = state.opt_state[0].mu["layers"][3]["mlp"]["down"].get_value()
    assert mu.shape == (13_696, 4096) and mu.sharding.spec == P("tensor", "fsdp")
    bshard = {"tokens": batch_sharding(mesh)}
    batch = {"tokens": jax.ShapeDtypeStruct((8, 256), jnp.int32, sharding=bshard["tokens"])}
    step = make_train_step(make_lm_loss(graphdef), optimizer, mesh, shardings, bshard)
    lowered = step.lower(state, batch)
    assert "sharding" in lowered.as_text()[:200_000]
