"""Decoder: NumPy reference forward, KV cache, padding/packing, log-probs, dtypes, presets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_desktop.model_configs import from_config_dict, get_config, param_count, to_config_dict
from jaxrl_desktop.models import (
    Decoder,
    next_token_loss,
    positions_from_segments,
    sequence_logprob,
    token_logprobs,
)

TINY = get_config("tiny")


@jax.jit
def _fwd(model: Decoder, tokens: jax.Array, kwargs: dict | None = None) -> jax.Array:
    """Jitted forward (one compile per shape is much faster than eager op-by-op dispatch)."""
    return model(tokens, **(kwargs or {}))

# GLM-style variant: partial interleaved RoPE, tied embeddings, no QKV bias, MHA-free GQA 4:1.
TINY_GLM = get_config(
    "tiny", num_heads=4, num_kv_heads=1, rope_fraction=0.5, rope_interleaved=True, qkv_bias=False,
    tie_embeddings=True,
)


def _randomize(model: Decoder, seed: int = 0, scale: float = 0.3) -> Decoder:
    """Replace every parameter with O(scale) noise (biases and norm scales included) so the test
    exercises each of them."""
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [
        (1.0 + 0.2 * jax.random.normal(k, x.shape)) if x.ndim == 1 else scale * jax.random.normal(k, x.shape)
        for k, x in zip(keys, leaves, strict=True)
    ]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, new))


# ------------------------------------------------------------------------ NumPy reference
def _np_rope(x: np.ndarray, pos: np.ndarray, cfg) -> np.ndarray:
    rd = cfg.rotary_dim
    inv = 1.0 / cfg.rope_theta ** (np.arange(0, rd, 2) / rd)
    ang = pos[:, :, None, None] * inv  # [B,T,1,rd/2]
    cos, sin = np.cos(ang), np.sin(ang)
    out = x.copy()
    if cfg.rope_interleaved:
        a, b = x[..., 0:rd:2], x[..., 1:rd:2]
        out[..., 0:rd:2] = a * cos - b * sin
        out[..., 1:rd:2] = b * cos + a * sin
    else:
        a, b = x[..., : rd // 2], x[..., rd // 2 : rd]
        out[..., : rd // 2] = a * cos - b * sin
        out[..., rd // 2 : rd] = b * cos + a * sin
    return out


def _np_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _np_forward(p: dict, tokens: np.ndarray, cfg) -> np.ndarray:
    """Straightforward float64 forward: loops over heads, explicit causal softmax."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    b, t = tokens.shape
    pos = np.broadcast_to(np.arange(t), (b, t)).astype(np.float64)
    x = p["embed"][tokens]
    group = cfg.num_heads // cfg.num_kv_heads
    for i in range(cfg.num_layers):
        lp = p["layers"][i]
        a = lp["attn"]
        h = _np_norm(x, lp["attn_norm"]["scale"], cfg.norm_eps)
        q = np.einsum("btd,dhk->bthk", h, a["q"])
        k = np.einsum("btd,dhk->bthk", h, a["k"])
        v = np.einsum("btd,dhk->bthk", h, a["v"])
        if cfg.qkv_bias:
            q, k, v = q + a["q_bias"], k + a["k_bias"], v + a["v_bias"]
        q, k = _np_rope(q, pos, cfg), _np_rope(k, pos, cfg)
        out = np.zeros_like(q)
        for head in range(cfg.num_heads):
            kh = head // group
            s = np.einsum("btk,bsk->bts", q[:, :, head], k[:, :, kh]) / np.sqrt(cfg.head_dim)
            s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
            w = np.exp(s - s.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            out[:, :, head] = np.einsum("bts,bsk->btk", w, v[:, :, kh])
        x = x + np.einsum("bthk,hkd->btd", out, a["o"])
        m = lp["mlp"]
        h = _np_norm(x, lp["mlp_norm"]["scale"], cfg.norm_eps)
        g = h @ m["gate"]
        x = x + ((g / (1 + np.exp(-g))) * (h @ m["up"])) @ m["down"]
    x = _np_norm(x, p["final_norm"]["scale"], cfg.norm_eps)
    head = p["embed"].T if cfg.tie_embeddings else p["lm_head"]
    return x @ head


@pytest.mark.parametrize("cfg", [TINY, TINY_GLM], ids=["qwen-style", "glm-style"])
def test_forward_matches_numpy_reference(cfg):
    model = _randomize(Decoder(cfg, rngs=nnx.Rngs(0)))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12))
    logits = _fwd(model, jnp.asarray(tokens))
    assert logits.dtype == jnp.float32 and logits.shape == (2, 12, cfg.vocab_size)
    ref = _np_forward(nnx.to_pure_dict(nnx.state(model)), tokens, cfg)
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=2e-4, atol=2e-4)


def test_reference_detects_a_wrong_model():
    """The reference is sensitive: swapping RoPE styles changes the logits noticeably."""
    model = _randomize(Decoder(TINY, rngs=nnx.Rngs(0)))
    tokens = np.random.default_rng(0).integers(0, TINY.vocab_size, (1, 12))
    ref = _np_forward(nnx.to_pure_dict(nnx.state(model)), tokens, TINY.replace(rope_interleaved=True))
    assert np.abs(np.asarray(_fwd(model, jnp.asarray(tokens))) - ref).max() > 1e-2


# --------------------------------------------------------------------------- KV cache
@pytest.mark.parametrize("side", ["left", "right"])
def test_cache_matches_full_forward(side):
    cfg = TINY
    model = _randomize(Decoder(cfg, rngs=nnx.Rngs(1)))
    rng = np.random.default_rng(1)
    lengths = [7, 4, 9]
    p = max(lengths)
    seqs = [rng.integers(3, cfg.vocab_size, n + 5) for n in lengths]  # prompt + 5 continuation tokens
    prompts = np.zeros((3, p), np.int32)
    mask = np.zeros((3, p), bool)
    for i, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
        sl = slice(p - n, p) if side == "left" else slice(0, n)
        prompts[i, sl], mask[i, sl] = s[:n], True
    cache = model.init_cache(3, p + 5)
    logits, cache = model(jnp.asarray(prompts), attention_mask=jnp.asarray(mask), cache=cache)
    # causal: one full forward over prompt + continuation gives every expected logit
    fulls = [np.asarray(_fwd(model, jnp.asarray(s[None]))[0]) for s in seqs]
    for i, n in enumerate(lengths):
        got = logits[i, p - n :] if side == "left" else logits[i, :n]
        np.testing.assert_allclose(np.asarray(got), fulls[i][:n], atol=1e-4)
    decode_step = jax.jit(lambda m, tok, c: m(tok, cache=c))
    for j in range(5):
        tok = jnp.asarray([[s[n + j]] for s, n in zip(seqs, lengths, strict=True)])
        step_logits, cache = decode_step(model, tok, cache)
        for i, n in enumerate(lengths):
            np.testing.assert_allclose(np.asarray(step_logits[i, 0]), fulls[i][n + j], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(cache.lengths), np.array(lengths) + 5)


def test_padding_and_packing_equal_separate_sequences():
    cfg = TINY
    model = _randomize(Decoder(cfg, rngs=nnx.Rngs(2)))
    rng = np.random.default_rng(2)
    a, b = rng.integers(3, cfg.vocab_size, 5), rng.integers(3, cfg.vocab_size, 6)
    la, lb = _fwd(model, jnp.asarray(a[None])), _fwd(model, jnp.asarray(b[None]))
    packed = np.concatenate([a, b, [0, 0]])[None]
    seg = np.array([[1] * 5 + [2] * 6 + [0, 0]])
    np.testing.assert_array_equal(positions_from_segments(jnp.asarray(seg))[0, :11], list(range(5)) + list(range(6)))
    lp = _fwd(model, jnp.asarray(packed), {"segment_ids": jnp.asarray(seg)})
    np.testing.assert_allclose(np.asarray(lp[0, :5]), np.asarray(la[0]), atol=1e-4)
    np.testing.assert_allclose(np.asarray(lp[0, 5:11]), np.asarray(lb[0]), atol=1e-4)
    left = np.concatenate([[0, 0, 0], a])[None]
    ll = _fwd(model, jnp.asarray(left), {"attention_mask": jnp.asarray(left != 0)})
    assert np.isfinite(np.asarray(ll)).all()
    np.testing.assert_allclose(np.asarray(ll[0, 3:]), np.asarray(la[0]), atol=1e-4)


# -------------------------------------------------------------------------- log-probs
def test_token_logprobs_and_loss():
    cfg = TINY
    model = _randomize(Decoder(cfg, rngs=nnx.Rngs(3)), scale=0.1)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 10)))
    lp = token_logprobs(model, tokens)
    logits = np.asarray(model(tokens), np.float64)
    logz = np.log(np.exp(logits).sum(-1))
    manual = np.take_along_axis(logits[:, :-1], np.asarray(tokens)[:, 1:, None], -1)[..., 0] - logz[:, :-1]
    np.testing.assert_allclose(np.asarray(lp[:, 1:]), manual, atol=1e-5)
    assert np.all(np.asarray(lp[:, 0]) == 0)
    target = np.zeros((2, 10), bool)
    target[:, 6:] = True
    total, count = sequence_logprob(model, tokens, jnp.asarray(target))
    np.testing.assert_allclose(np.asarray(total), manual[:, 5:].sum(-1), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(count), [4, 4])
    loss, aux = next_token_loss(model, {"tokens": tokens})
    np.testing.assert_allclose(float(loss), -manual.mean(), atol=1e-5)
    assert float(aux["tokens"]) == 18


def test_bf16_compute_and_remat():
    cfg = TINY.replace(dtype="bfloat16")
    m32 = _randomize(Decoder(TINY, rngs=nnx.Rngs(4)), scale=0.1)
    m16 = nnx.merge(nnx.graphdef(Decoder(cfg, rngs=nnx.Rngs(4))), nnx.state(m32))
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 8)))
    l32, l16 = _fwd(m32, tokens), _fwd(m16, tokens)
    assert l16.dtype == jnp.float32
    assert float(jnp.abs(l16 - l32).max()) < 0.1 * float(jnp.abs(l32).max()) + 0.05
    # remat gives identical gradients
    mr = nnx.merge(nnx.graphdef(Decoder(TINY.replace(remat=True), rngs=nnx.Rngs(4))), nnx.state(m32))

    @jax.jit
    def grads(model):
        return nnx.grad(lambda m: next_token_loss(m, {"tokens": tokens})[0])(model)

    g1, g2 = jax.tree.leaves(grads(m32)), jax.tree.leaves(grads(mr))
    for a, b in zip(g1, g2, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


# ---------------------------------------------------------------------------- presets
# Published sizes (checked against the model cards / safetensors metadata):
#   THUDM/glm-4-9b   : 9.40B  ("9.4B params"); our exact count 9,399,951,360
#   Qwen/Qwen2.5-14B : 14.7B on the card ("Number of Parameters: 14.7B", 14.77B safetensors);
#                      our exact count 14,770,033,664
#   Qwen/Qwen2-0.5B  : 0.49B (494,032,768);  HuggingFaceTB/SmolLM-135M: 134.5M (134,515,008)
PUBLISHED = {"glm4-9b": 9.40e9, "qwen2.5-14b": 14.77e9, "qwen2-0.5b": 494.0e6, "smollm-135m": 134.5e6}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts(name):
    """Abstract build (no memory) on a (data=2, fsdp=2, tensor=2) mesh, with shardings attached;
    the count must match the analytic formula exactly and the published size within 1%."""
    from jaxrl_desktop.mesh import make_mesh
    from jaxrl_desktop.sharding import abstract_model

    cfg = get_config(name)
    mesh = make_mesh(2, 2, 2)
    _, state = abstract_model(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh)
    leaves = jax.tree.leaves(state)
    n = sum(int(np.prod(x.shape)) for x in leaves)
    assert n == param_count(cfg)
    assert abs(n - PUBLISHED[name]) / PUBLISHED[name] < 0.01, n
    assert all(isinstance(x.sharding, jax.sharding.NamedSharding) for x in leaves)
    gate = state["layers"][0]["mlp"]["gate"].get_value()
    assert gate.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert gate.dtype == cfg.weight_dtype


def test_small_preset_size_and_configdict_roundtrip():
    small = get_config("small")
    assert 1e6 <= param_count(small) <= 5e6
    cd = to_config_dict(small)
    cd.num_layers = 3
    assert from_config_dict(cd) == small.replace(num_layers=3)
    assert from_config_dict({"preset": "tiny", "vocab_size": 300}) == get_config("tiny", vocab_size=300)
    with pytest.raises(KeyError):
        get_config("nope")
