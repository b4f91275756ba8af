"""Losses of the three training phases, all on action tokens only.

* SFT (behaviour cloning and Entropulse): mean next-token cross-entropy over action tokens.
* Step-level GRPO: every step of a trajectory carries the trajectory's verifier reward; advantages
  are normalised over all steps of the task instance's group of rollouts; PPO clipping with separate
  low / high epsilons (asymmetric, "clip-higher"); optional KL to a frozen reference (k3 estimator,
  metric ``kl``); the KL to the rollouts' sampling policy is always reported (``kl_behaviour``).

Each loss returns ``(loss, metrics)`` with the mean token entropy of the policy at action positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_desktop.models.decoder import entropy_from_logits, shift_logprobs


def _forward(graphdef: nnx.GraphDef, params: nnx.State, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(token log-probs aligned with tokens, entropy of the distribution that produced each token, mask)."""
    model = nnx.merge(graphdef, params)
    tokens = batch["tokens"]
    logits = model(tokens, attention_mask=batch["attention_mask"])
    lp = shift_logprobs(logits, tokens)
    ent = entropy_from_logits(logits[:, :-1])
    ent = jnp.concatenate([jnp.zeros_like(ent[:, :1]), ent], axis=1)
    mask = batch["loss_mask"].astype(jnp.float32).at[:, 0].set(0.0)
    return lp, ent, mask


def make_sft_loss(graphdef: nnx.GraphDef):
    def loss_fn(params: nnx.State, batch: dict) -> tuple[jax.Array, dict]:
        lp, ent, mask = _forward(graphdef, params, batch)
        n = jnp.maximum(mask.sum(), 1.0)
        return -jnp.sum(lp * mask) / n, {"entropy": jnp.sum(ent * mask) / n, "tokens": mask.sum()}

    return loss_fn


def make_grpo_loss(graphdef: nnx.GraphDef, eps_low: float, eps_high: float, kl_coef: float = 0.0):
    """Batch keys: tokens, attention_mask, loss_mask, old_logprobs [B, T], advantages [B], and with
    ``kl_coef > 0`` ref_logprobs [B, T]."""

    def loss_fn(params: nnx.State, batch: dict) -> tuple[jax.Array, dict]:
        lp, ent, mask = _forward(graphdef, params, batch)
        n = jnp.maximum(mask.sum(), 1.0)
        ratio = jnp.exp(jnp.where(mask > 0, lp - batch["old_logprobs"], 0.0))
        adv = batch["advantages"][:, None]
        clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
        pg = -jnp.minimum(ratio * adv, clipped * adv)
        is_clipped = ((ratio < 1.0 - eps_low) & (adv < 0)) | ((ratio > 1.0 + eps_high) & (adv > 0))
        metrics = {
            "entropy": jnp.sum(ent * mask) / n,
            "clip_frac": jnp.sum(is_clipped * mask) / n,
            "ratio": jnp.sum(ratio * mask) / n,
            # k3 estimate of KL(sampling policy || current policy) on the sampled tokens: how far the
            # updates have moved the policy from the one that collected the rollouts (always logged)
            "kl_behaviour": jnp.sum((ratio - 1.0 - jnp.log(ratio)) * mask) / n,
            "tokens": mask.sum(),
        }
        per_token = pg
        if kl_coef > 0:
            d = batch["ref_logprobs"] - lp
            kl = jnp.exp(d) - d - 1.0  # k3: unbiased, non-negative estimate of KL(pi || ref)
            per_token = per_token + kl_coef * kl
            metrics["kl"] = jnp.sum(kl * mask) / n
        return jnp.sum(per_token * mask) / n, metrics

    return loss_fn


def make_logprob_fn(graphdef: nnx.GraphDef):
    """``fn(params, batch) -> token log-probs [B, T]`` (for the frozen reference policy)."""

    def fn(params: nnx.State, batch: dict) -> jax.Array:
        return _forward(graphdef, params, batch)[0]

    return fn


def group_advantages(rewards: Sequence[float], groups: Sequence[int], eps: float = 1e-6) -> np.ndarray:
    """Per-step advantages: ``(r - mean) / (std + eps)`` over all steps sharing a group id.

    ``rewards[i]`` is the verifier reward of the trajectory step i belongs to, so longer trajectories
    weigh more in their group's statistics (step-level GRPO). A group whose steps all share one reward
    gets zero advantages (no signal)."""
    r = np.asarray(rewards, np.float64)
    g = np.asarray(groups)
    out = np.zeros_like(r)
    for gid in np.unique(g):
        sel = g == gid
        std = r[sel].std()
        if std > eps:
            out[sel] = (r[sel] - r[sel].mean()) / (std + eps)
    return out.astype(np.float32)
