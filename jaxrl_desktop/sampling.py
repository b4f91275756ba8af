"""Autoregressive sampling inside jit: KV-cache prefill + ``lax.while_loop`` decode.

Prompts are a ``[B, P]`` token batch with a bool mask; left and right padding both work (each row's
next token is predicted from its last real token; padding never enters attention). Decoding stops per
sequence at ``eos_id`` and the loop exits once every row is done. An optional
:class:`~jaxrl_desktop.grammar_mask.TokenGrammar` constrains every sample to the action grammar.
:func:`sample_no_cache` is the same sampler recomputing the full sequence each step (a baseline).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_desktop.grammar_mask import TokenGrammar, advance, allowed_tokens
from jaxrl_desktop.models.attention import KVCache
from jaxrl_desktop.models.decoder import Decoder, entropy_from_logits


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens. ``greedy`` ignores temperature/top-p; ``top_p=1`` disables nucleus."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    eos_id: int = 2
    pad_id: int = 0


@flax.struct.dataclass
class SampleOutput:
    """``tokens[B, N]`` (``pad_id`` after the end), ``mask`` marks generated tokens (end token
    included), ``logprobs`` are under the distribution actually sampled from (temperature, top-p and
    grammar mask applied; greedy: the masked temperature-1 distribution), ``model_logprobs`` under
    the raw model (T=1, no mask), ``entropy`` is the raw model's entropy at each generated position.
    ``finished`` says the row produced ``eos_id``."""

    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    model_logprobs: jax.Array
    entropy: jax.Array
    lengths: jax.Array
    finished: jax.Array


def last_valid_index(mask: jax.Array) -> jax.Array:
    """Index of each row's last True entry (0 for an empty row)."""
    idx = jnp.arange(mask.shape[1], dtype=jnp.int32)
    return jnp.max(jnp.where(mask, idx, 0), axis=1)


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
    """Set logits outside the smallest set with probability mass >= ``top_p`` to -inf."""
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= cutoff, logits, -jnp.inf)


def choose_tokens(
    logits: jax.Array, rng: jax.Array, cfg: SamplingConfig, allowed: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pick one token per row from ``logits[B, V]``: (tokens, sampling log-probs, model log-probs)."""
    logits = logits.astype(jnp.float32)
    model_logp = jax.nn.log_softmax(logits, axis=-1)
    if allowed is not None:
        logits = jnp.where(allowed, logits, -jnp.inf)
    if cfg.greedy:
        policy = logits
        tokens = jnp.argmax(policy, axis=-1)
    else:
        policy = logits / max(cfg.temperature, 1e-6)
        if cfg.top_p < 1.0:
            policy = top_p_filter(policy, cfg.top_p)
        tokens = jax.random.categorical(rng, policy, axis=-1)
    tokens = tokens.astype(jnp.int32)
    pick = lambda lp: jnp.take_along_axis(lp, tokens[:, None], axis=-1)[:, 0]  # noqa: E731
    return tokens, pick(jax.nn.log_softmax(policy, axis=-1)), pick(model_logp)


# A "stepper" returns (first logits, state, step) where step(state, tokens, valid, i) feeds one token
# per row and returns the next logits: with a KV cache, or by recomputing the whole sequence.
def _cache_stepper(model: Decoder, prompts: jax.Array, prompt_mask: jax.Array, n_new: int) -> tuple:
    b, p = prompts.shape
    cache = model.init_cache(b, p + n_new)
    logits, cache = model(prompts, attention_mask=prompt_mask, cache=cache)
    first = jnp.take_along_axis(logits, last_valid_index(prompt_mask)[:, None, None], axis=1)[:, 0]

    def step(state: KVCache, tokens: jax.Array, valid: jax.Array, i: jax.Array) -> tuple[jax.Array, KVCache]:
        logits, state = model(tokens[:, None], attention_mask=valid[:, None], cache=state)
        return logits[:, 0], state

    return first, cache, step


def _recompute_stepper(model: Decoder, prompts: jax.Array, prompt_mask: jax.Array, n_new: int) -> tuple:
    b, p = prompts.shape
    buf = jnp.concatenate([prompts, jnp.zeros((b, n_new), prompts.dtype)], axis=1)
    mask = jnp.concatenate([prompt_mask, jnp.zeros((b, n_new), bool)], axis=1)

    def next_logits(buf: jax.Array, mask: jax.Array) -> jax.Array:
        logits = model(buf, attention_mask=mask)
        return jnp.take_along_axis(logits, last_valid_index(mask)[:, None, None], axis=1)[:, 0]

    def step(state: tuple, tokens: jax.Array, valid: jax.Array, i: jax.Array) -> tuple[jax.Array, tuple]:
        buf, mask = state
        buf = jax.lax.dynamic_update_slice(buf, tokens[:, None], (0, p + i))
        mask = jax.lax.dynamic_update_slice(mask, valid[:, None], (0, p + i))
        return next_logits(buf, mask), (buf, mask)

    return next_logits(buf, mask), (buf, mask), step


def _generate(
    model: Decoder,
    prompts: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    grammar: TokenGrammar | None,
    cfg: SamplingConfig,
    make_stepper: Callable,
) -> SampleOutput:
    b = prompts.shape[0]
    n = cfg.max_new_tokens
    if grammar is not None and grammar.end_id != cfg.eos_id:
        raise ValueError(f"grammar end token {grammar.end_id} differs from eos_id {cfg.eos_id}")
    prompt_mask = prompt_mask.astype(bool)
    logits, state, step = make_stepper(model, prompts, prompt_mask, n)
    zeros_f = jnp.zeros((b, n), jnp.float32)
    carry = dict(
        i=jnp.zeros((), jnp.int32), logits=logits, state=state, rng=rng,
        tokens=jnp.full((b, n), cfg.pad_id, jnp.int32), mask=jnp.zeros((b, n), bool),
        logprobs=zeros_f, model_logprobs=zeros_f, entropy=zeros_f, done=jnp.zeros((b,), bool),
        gstate=grammar.initial_state(b) if grammar is not None else jnp.zeros((b,), jnp.int32),
    )

    def cond(c: dict) -> jax.Array:
        return (c["i"] < n) & ~jnp.all(c["done"])

    def body(c: dict) -> dict:
        i = c["i"]
        allowed = None if grammar is None else allowed_tokens(grammar, c["gstate"], n - i)
        tok, lp, mlp = choose_tokens(c["logits"], jax.random.fold_in(c["rng"], i), cfg, allowed)
        live = ~c["done"]
        tok = jnp.where(live, tok, cfg.pad_id)
        put = lambda buf, x: jax.lax.dynamic_update_slice(buf, x[:, None], (0, i))  # noqa: E731
        logits, state = step(c["state"], tok, live, i)
        gstate = c["gstate"] if grammar is None else jnp.where(live, advance(grammar, c["gstate"], tok), c["gstate"])
        return dict(
            i=i + 1, logits=logits, state=state, rng=c["rng"], gstate=gstate,
            tokens=put(c["tokens"], tok), mask=put(c["mask"], live),
            logprobs=put(c["logprobs"], jnp.where(live, lp, 0.0)),
            model_logprobs=put(c["model_logprobs"], jnp.where(live, mlp, 0.0)),
            entropy=put(c["entropy"], jnp.where(live, entropy_from_logits(c["logits"]), 0.0)),
            done=c["done"] | (live & (tok == cfg.eos_id)),
        )

    c = jax.lax.while_loop(cond, body, carry)
    return SampleOutput(
        tokens=c["tokens"], mask=c["mask"], logprobs=c["logprobs"], model_logprobs=c["model_logprobs"],
        entropy=c["entropy"], lengths=c["mask"].sum(axis=1, dtype=jnp.int32), finished=c["done"],
    )


@partial(jax.jit, static_argnames=("graphdef", "cfg", "use_cache"))
def _sample_jit(graphdef, params, prompts, prompt_mask, rng, grammar, cfg, use_cache):
    model = nnx.merge(graphdef, params)
    stepper = _cache_stepper if use_cache else _recompute_stepper
    return _generate(model, prompts, prompt_mask, rng, grammar, cfg, stepper)


def sample(
    model: Decoder,
    prompts: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    cfg: SamplingConfig,
    grammar: TokenGrammar | None = None,
) -> SampleOutput:
    """Sample up to ``cfg.max_new_tokens`` per prompt with a KV cache (jit-compiled, cached per
    model structure and config). ``grammar=None`` switches the action mask off."""
    graphdef, params = nnx.split(model)
    return _sample_jit(graphdef, params, prompts, prompt_mask, rng, grammar, cfg, True)


def sample_no_cache(
    model: Decoder,
    prompts: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    cfg: SamplingConfig,
    grammar: TokenGrammar | None = None,
) -> SampleOutput:
    """Same as :func:`sample` but re-running the whole sequence every step (no KV cache)."""
    graphdef, params = nnx.split(model)
    return _sample_jit(graphdef, params, prompts, prompt_mask, rng, grammar, cfg, False)


def make_sampler(
    graphdef: nnx.GraphDef, cfg: SamplingConfig, use_cache: bool = True
) -> Callable[..., SampleOutput]:
    """``fn(params, prompts, prompt_mask, rng, grammar=None) -> SampleOutput`` for an actor that holds
    params as a State (e.g. received from the learner)."""

    def fn(params, prompts, prompt_mask, rng, grammar=None):
        return _sample_jit(graphdef, params, prompts, prompt_mask, rng, grammar, cfg, use_cache)

    return fn
