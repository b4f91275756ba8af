"""Reasoning & aggregating: answer under several orderings / prompts and combine the answers.

Given ``[R, O]`` option log-probabilities (R prompts, e.g. R orderings of the same demonstrations or R
reasoning templates; O answer options), :func:`aggregate` combines them by majority vote over each
prompt's argmax (ties broken by the mean probability) and by averaging the per-prompt option
distributions, and reports agreement: the fraction of prompts whose own answer equals the final
answer, and the fraction of prompt pairs that agree with each other.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

PromptFn = Callable[[Sequence[str], str], str]


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """The combined answer of ``R`` prompts (option indices; map with ``options[i]``)."""

    per_prompt: np.ndarray  # [R] argmax option of each prompt
    votes: np.ndarray  # [O] how many prompts chose each option
    mean_probs: np.ndarray  # [O] average of the per-prompt normalised option distributions
    vote: int  # majority-vote answer
    average: int  # probability-averaging answer
    agreement_vote: float  # fraction of prompts whose answer == vote
    agreement_average: float  # fraction of prompts whose answer == average
    pairwise: float  # fraction of prompt pairs giving the same answer (1.0 for a single prompt)

    def summary(self, options: Sequence[str] | None = None) -> dict[str, object]:
        name = (lambda i: options[i]) if options is not None else (lambda i: i)
        return {
            "vote": name(self.vote), "average": name(self.average),
            "agreement_vote": self.agreement_vote, "agreement_average": self.agreement_average,
            "pairwise_agreement": self.pairwise, "prompts": len(self.per_prompt),
        }


def _normalise(logp: np.ndarray) -> np.ndarray:
    z = logp - logp.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def aggregate(option_logprobs: np.ndarray) -> Aggregate:
    """Combine ``[R, O]`` option log-probabilities (any scale per row; rows are normalised)."""
    lp = np.asarray(option_logprobs, np.float64)
    if lp.ndim != 2 or lp.shape[0] < 1 or lp.shape[1] < 1:
        raise ValueError(f"expected [R >= 1, O >= 1] option log-probabilities, got shape {lp.shape}")
    if not np.isfinite(lp).any(axis=1).all():
        raise ValueError("a prompt has no finite option log-probability")
    lp = np.where(np.isfinite(lp), lp, -np.inf)
    probs = _normalise(lp)
    per = probs.argmax(axis=1)
    r, o = lp.shape
    votes = np.bincount(per, minlength=o)
    mean = probs.mean(axis=0)
    top = np.flatnonzero(votes == votes.max())
    vote = int(top[np.argmax(mean[top])])  # tie: the tied option with the higher mean probability
    average = int(np.argmax(mean))
    same = per[:, None] == per[None, :]
    pairwise = 1.0 if r == 1 else float((same.sum() - r) / (r * (r - 1)))
    return Aggregate(per, votes, mean, vote, average, float(np.mean(per == vote)),
                     float(np.mean(per == average)), pairwise)


def orderings(rng: np.random.Generator, n: int, count: int, include_identity: bool = True) -> np.ndarray:
    """``[count, n]`` distinct permutations of ``range(n)`` (the given order first if requested)."""
    count = min(count, math.factorial(n))
    seen: list[tuple[int, ...]] = [tuple(range(n))] if include_identity else []
    if count > 5000 or n > 7:
        while len(seen) < count:
            p = tuple(int(x) for x in rng.permutation(n))
            if p not in seen:
                seen.append(p)
    else:
        rest = [p for p in itertools.permutations(range(n)) if p not in seen]
        pick = rng.permutation(len(rest))[: count - len(seen)]
        seen += [rest[i] for i in pick]
    return np.asarray(seen[:count], np.int64).reshape(count, n)


def answer_under_orderings(
    scorer,
    demos: Sequence[str],
    question: str,
    options: Sequence[str],
    perms: np.ndarray,
    prompt_fn: PromptFn,
) -> Aggregate:
    """Score ``options`` after ``demos`` in each ordering ``perms [R, k]`` and aggregate.

    ``scorer`` needs ``option_logprobs(prompts, options) -> [R, O]`` (e.g.
    :class:`ranking.llm_labels.LLMScorer`).
    """
    prompts = [prompt_fn([demos[int(i)] for i in p], question) for p in perms]
    return aggregate(scorer.option_logprobs(prompts, list(options)))


def answer_under_prompts(scorer, prompts: Sequence[str], options: Sequence[str]) -> Aggregate:
    """Aggregate over arbitrary prompts (e.g. several reasoning templates of one question)."""
    return aggregate(scorer.option_logprobs(list(prompts), list(options)))
