"""The decoder model as a rollout :class:`~jaxrl_desktop.rollout.Policy`: prompts -> KV-cache sampling
(optionally grammar-masked) inside jit -> action text, token ids and log-probs."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxrl_desktop.grammar_mask import TokenGrammar
from jaxrl_desktop.prompt import PromptEncoder, pack_prompts
from jaxrl_desktop.rollout import Choice, StepView
from jaxrl_desktop.sampling import SamplingConfig, make_sampler
from jaxrl_desktop.sharding import shard_batch


def bucket(n: int, multiple: int) -> int:
    """``n`` rounded up to a power-of-two multiple of ``multiple`` (few distinct jit shapes)."""
    size = multiple
    while size < n:
        size *= 2
    return size


class ModelPolicy:
    """Samples one action per view. Call :meth:`set_params` after each update and :meth:`seed` once per
    rollout so sampling is a pure function of (params, key, observations)."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        params: nnx.State,
        encoder: PromptEncoder,
        mesh: Mesh,
        sampling: SamplingConfig,
        grammar: TokenGrammar | None = None,
        batch_multiple: int = 8,
    ):
        self.encoder = encoder
        self.mesh = mesh
        self.params = params
        self.grammar = grammar
        self.sampling = sampling
        self.batch_multiple = max(batch_multiple, mesh.shape["data"])
        self._sample = make_sampler(graphdef, sampling)
        self._key = jax.random.key(0)
        self._calls = 0
        self.tokens_generated = 0

    def set_params(self, params: nnx.State) -> None:
        self.params = params

    def seed(self, key: jax.Array) -> None:
        self._key, self._calls = key, 0

    def prompts(self, views: Sequence[StepView]) -> list[list[int]]:
        return [self.encoder.prompt(v.instruction, v.history, v.feedback, v.a11y) for v in views]

    def act(self, views: Sequence[StepView]) -> list[Choice]:
        if not views:
            return []
        prompts = self.prompts(views)
        n = len(prompts)
        rows = bucket(n, self.batch_multiple)
        pad = [[self.encoder.tok.pad_id]] * (rows - n)
        tokens, mask = pack_prompts([*prompts, *pad], self.encoder.cfg.max_prompt_tokens, self.encoder.tok.pad_id)
        mask[n:] = False
        mask[n:, -1] = True  # padding rows: one dummy token so attention has a key
        batch = shard_batch({"tokens": tokens, "mask": mask}, self.mesh)
        key = jax.random.fold_in(self._key, self._calls)
        self._calls += 1
        with jax.set_mesh(self.mesh):
            out = self._sample(self.params, batch["tokens"], batch["mask"], key, self.grammar)
        toks, gen_mask, logp, ent = jax.device_get((out.tokens, out.mask, out.model_logprobs, out.entropy))
        choices = []
        for i in range(n):
            ids = [int(t) for t, m in zip(toks[i], gen_mask[i], strict=True) if m]
            self.tokens_generated += len(ids)
            text = self.encoder.decode_action(ids)
            choices.append(Choice(text=text, prompt_ids=prompts[i], action_ids=ids,
                                  logprobs=np.asarray(logp[i, : len(ids)], np.float32),
                                  entropy=np.asarray(ent[i, : len(ids)], np.float32)))
        return choices
