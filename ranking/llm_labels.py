"""Ranker labels from the LLM itself: log p(gold answer | demonstrations in this order, question).

:class:`LLMScorer` runs the shared :class:`~jaxrl_desktop.models.Decoder` on the mesh: prompts and
answers are tokenised separately (``[bos] + prompt + answer``), grouped into length buckets, padded
to a power-of-two number of rows (a multiple of the batch shards) and scored by one jitted function
with explicit ``NamedSharding`` in/out shardings, so only a few shapes ever compile.

:func:`sample_orders` draws ordered k-shot lists from a candidate list; :func:`label_candidates`
scores them and returns :class:`~ranking.listwise.ListwiseData` for the ranker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrl_desktop.models import Decoder, sequence_logprob
from jaxrl_desktop.sharding import batch_sharding, param_shardings
from jaxrl_desktop.tokenizer import Tokenizer
from ranking.candidates import Candidates
from ranking.listwise import SOURCE_LLM, ListwiseData

log = logging.getLogger(__name__)
LENGTH_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
PromptFn = Callable[[Sequence[str], str], str]


def default_prompt(demos: Sequence[str], question: str) -> str:
    """Demonstrations, one per line, in the given order, then the question."""
    return "\n".join([*demos, question])


def _pow2(n: int) -> int:
    return 1 << max(0, (max(n, 1) - 1).bit_length())


class LLMScorer:
    """Batched, jitted ``log p(answer | prompt)`` under a decoder whose params sit on ``mesh``."""

    def __init__(
        self,
        model: Decoder,
        tokenizer: Tokenizer,
        mesh: Mesh,
        batch_size: int = 256,
        add_bos: bool = True,
        max_length: int | None = None,
    ):
        self.tokenizer, self.mesh, self.add_bos = tokenizer, mesh, add_bos
        self.max_length = max_length or model.cfg.max_seq_len
        self.graphdef, params = nnx.split(model)
        shardings = param_shardings(params, mesh)
        self.params = jax.device_put(params, shardings)
        self.shards = int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
        self.batch_size = max(self.shards, -(-batch_size // self.shards) * self.shards)
        bs = self._bs = batch_sharding(mesh, 2)
        rep = NamedSharding(mesh, PartitionSpec())

        def score(params: nnx.State, tokens: jax.Array, mask: jax.Array, target: jax.Array) -> jax.Array:
            model = nnx.merge(self.graphdef, params)
            total, _ = sequence_logprob(model, tokens, target, attention_mask=mask)
            return total

        self._fn = jax.jit(score, in_shardings=(shardings, bs, bs, bs), out_shardings=rep)

    def _encode(self, prompts: Sequence[str], answers: Sequence[str]) -> list[tuple[list[int], int]]:
        tok = self.tokenizer
        p_ids = tok.encode_batch(list(prompts))
        a_ids = tok.encode_batch(list(answers))
        out = []
        for i, (p, a) in enumerate(zip(p_ids, a_ids, strict=True)):
            if not a:
                raise ValueError(f"answer {i} ({answers[i]!r}) encodes to no tokens")
            ids = ([tok.bos_id] if self.add_bos and tok.bos_id is not None else []) + p
            if len(ids) + len(a) > self.max_length:  # keep the end: drop the oldest prompt tokens
                ids = ids[len(ids) + len(a) - self.max_length :]
            if not ids:
                raise ValueError(f"answer {i} alone is longer than max_length={self.max_length}")
            out.append((ids + a, len(a)))
        return out

    def logprob(self, prompts: Sequence[str], answers: Sequence[str], progress: bool = False) -> np.ndarray:
        """Sum of log p over each answer's tokens given its prompt -> float32 ``[N]``."""
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        seqs = self._encode(prompts, answers)
        out = np.zeros(len(seqs), np.float32)
        if not seqs:
            return out
        buckets = [b for b in LENGTH_BUCKETS if b < self.max_length] + [self.max_length]
        length_of = [min(b for b in buckets if b >= len(s)) for s, _ in seqs]
        order = sorted(range(len(seqs)), key=lambda i: (length_of[i], i))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(seqs), desc="LLM log p", unit="seq")
        start = 0
        while start < len(order):
            t = length_of[order[start]]
            rows = [i for i in order[start : start + self.batch_size] if length_of[i] == t]
            start += len(rows)
            n = -(-_pow2(len(rows)) // self.shards) * self.shards
            tokens = np.full((n, t), self.tokenizer.pad_id, np.int32)
            mask = np.zeros((n, t), bool)
            target = np.zeros((n, t), bool)
            for r, i in enumerate(rows):
                ids, n_ans = seqs[i]
                tokens[r, : len(ids)] = ids
                mask[r, : len(ids)] = True
                target[r, len(ids) - n_ans : len(ids)] = True
            with jax.set_mesh(self.mesh):
                args = [jax.device_put(a, self._bs) for a in (tokens, mask, target)]
                vals = self._fn(self.params, *args)
            out[rows] = np.asarray(vals)[: len(rows)]
            if bar is not None:
                bar.update(len(rows))
        if bar is not None:
            bar.close()
        return out

    def option_logprobs(self, prompts: Sequence[str], options: Sequence[str]) -> np.ndarray:
        """``[N, O]`` log p of every option as the continuation of every prompt (multiple choice)."""
        flat_p = [p for p in prompts for _ in options]
        flat_a = [o for _ in prompts for o in options]
        return self.logprob(flat_p, flat_a).reshape(len(prompts), len(options))


def sample_orders(
    rng: np.random.Generator,
    n_valid: int,
    k: int,
    m: int,
    seed_lists: Sequence[Sequence[int]] = (),
    seed_fraction: float = 0.5,
) -> np.ndarray:
    """``[m, min(k, n_valid)]`` distinct ordered k-lists over items ``0..n_valid-1``.

    A ``seed_fraction`` share are random permutations of the ``seed_lists`` (e.g. the pre-ranking
    top-k), the rest uniformly random ordered k-subsets. Fewer than ``m`` rows come back only when
    fewer distinct lists exist.
    """
    k = min(k, n_valid)
    if k < 1:
        return np.zeros((0, 0), np.int32)
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    n_seed = round(m * seed_fraction) if seed_lists else 0
    for attempt in range(50 * m):
        if len(out) >= m:
            break
        if len(out) < n_seed and attempt < 25 * m:
            base = list(seed_lists[attempt % len(seed_lists)])[:k]
            if len(base) < k:
                rest = [i for i in range(n_valid) if i not in base]
                base += list(rng.choice(rest, k - len(base), replace=False))
            cand = tuple(int(x) for x in rng.permutation(base))
        else:
            cand = tuple(int(x) for x in rng.choice(n_valid, k, replace=False))
        if cand not in seen:
            seen.add(cand)
            out.append(cand)
    return np.asarray(out, np.int32).reshape(len(out), k)


def label_candidates(
    scorer: LLMScorer,
    cands: Candidates,
    pool_texts: Sequence[str],
    questions: Sequence[str],
    golds: Sequence[str],
    k: int,
    m: int,
    prompt_fn: PromptFn = default_prompt,
    seed: int = 0,
    progress: bool = False,
) -> ListwiseData:
    """Sample ``m`` ordered ``k``-lists per candidate list, label each with the LLM's log p(gold).

    Half of the lists are permutations of the pre-ranking top-``k`` (candidates are stored in
    pre-ranking order), half random ordered ``k``-subsets of all candidates.
    """
    q_n = cands.where.shape[0]
    if not (len(questions) == len(golds) == q_n):
        raise ValueError(f"{q_n} candidate lists, {len(questions)} questions, {len(golds)} answers")
    rng = np.random.default_rng(seed)
    orders = np.full((q_n, m, k), -1, np.int32)
    prompts, answers, slots = [], [], []
    for i in range(q_n):
        n_valid = int(cands.where[i].sum())
        sampled = sample_orders(rng, n_valid, k, m, seed_lists=[list(range(min(k, n_valid)))])
        orders[i, : len(sampled), : sampled.shape[1]] = sampled
        for j, order in enumerate(sampled):
            demos = [pool_texts[int(cands.indices[i, c])] for c in order]
            prompts.append(prompt_fn(demos, questions[i]))
            answers.append(golds[i])
            slots.append((i, j))
    values = scorer.logprob(prompts, answers, progress=progress)
    rewards = np.zeros((q_n, m), np.float32)
    mask = np.zeros((q_n, m), bool)
    for (i, j), v in zip(slots, values, strict=True):
        rewards[i, j] = v
        mask[i, j] = True
    return ListwiseData(
        query_emb=cands.query_emb, item_emb=cands.item_emb, dense=cands.dense,
        prerank=cands.prerank, where=cands.where, orders=orders, rewards=rewards, list_mask=mask,
        source=np.full((q_n, m), SOURCE_LLM, np.int8), item_ids=cands.indices,
        queries=list(questions),
    )
