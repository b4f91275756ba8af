"""Reasoning & aggregating: majority vote, probability averaging, agreement, orderings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ranking.aggregate import aggregate, answer_under_orderings, answer_under_prompts, orderings


def _lp(probs):
    return np.log(np.asarray(probs, np.float64))


def test_vote_and_average_can_disagree():
    # Two prompts mildly prefer option 0, one strongly prefers option 1.
    a = aggregate(_lp([[0.5, 0.4, 0.1], [0.5, 0.4, 0.1], [0.02, 0.97, 0.01]]))
    assert a.per_prompt.tolist() == [0, 0, 1]
    assert a.votes.tolist() == [2, 1, 0]
    assert a.vote == 0
    np.testing.assert_allclose(a.mean_probs, [1.02 / 3, 1.77 / 3, 0.21 / 3])
    assert a.average == 1
    assert a.agreement_vote == pytest.approx(2 / 3)
    assert a.agreement_average == pytest.approx(1 / 3)
    assert a.pairwise == pytest.approx(1 / 3)  # pairs (0,1) agree; (0,2), (1,2) do not


def test_rows_are_normalised_and_scale_free():
    base = _lp([[0.7, 0.3], [0.2, 0.8], [0.65, 0.35]])
    shifted = base + np.array([[5.0], [-3.0], [100.0]])  # unnormalised log-scores per prompt
    a, b = aggregate(base), aggregate(shifted)
    np.testing.assert_allclose(a.mean_probs, b.mean_probs)
    assert (a.vote, a.average) == (b.vote, b.average) == (0, 0)


def test_vote_tie_broken_by_mean_probability():
    a = aggregate(_lp([[0.6, 0.4], [0.1, 0.9]]))
    assert a.votes.tolist() == [1, 1]
    assert a.vote == 1  # mean probs 0.35 vs 0.65
    assert a.pairwise == 0.0


def test_single_prompt_and_unanimity():
    a = aggregate(_lp([[0.1, 0.9]]))
    assert (a.vote, a.average, a.agreement_vote, a.pairwise) == (1, 1, 1.0, 1.0)
    b = aggregate(_lp([[0.1, 0.9]] * 4))
    assert (b.agreement_vote, b.agreement_average, b.pairwise) == (1.0, 1.0, 1.0)
    assert b.summary(["no", "yes"])["vote"] == "yes"


def test_minus_inf_options_are_allowed_but_not_all():
    a = aggregate(np.array([[-np.inf, 0.0], [-1.0, -2.0]]))
    assert a.per_prompt.tolist() == [1, 0]
    with pytest.raises(ValueError, match="no finite"):
        aggregate(np.array([[-np.inf, -np.inf], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        aggregate(np.zeros((3,)))


@pytest.mark.parametrize("n,count", [(3, 6), (4, 5), (9, 7), (1, 3)])
def test_orderings_are_distinct_permutations(n, count):
    perms = orderings(np.random.default_rng(0), n, count)
    assert perms.shape == (min(count, math.factorial(n)), n)
    assert perms[0].tolist() == list(range(n))
    assert len({tuple(p) for p in perms}) == len(perms)
    for p in perms:
        assert sorted(p.tolist()) == list(range(n))


class _RecencyScorer:
    """A fake LLM: the answer is the label of the LAST demonstration (recency), with some noise."""

    def __init__(self):
        self.prompts: list[str] = []

    def option_logprobs(self, prompts, options):
        self.prompts += list(prompts)
        out = np.full((len(prompts), len(options)), math.log(0.1))
        for i, p in enumerate(prompts):
            last = p.split("|")[-2].strip()  # "...| demo | question"
            out[i, options.index(last)] = math.log(0.8)
        return out


def test_answer_under_orderings_uses_each_order():
    scorer = _RecencyScorer()
    demos = ["A", "B", "A"]
    perms = np.array([[0, 1, 2], [2, 0, 1], [1, 2, 0], [0, 2, 1]])

    def prompt_fn(ds, q):
        return " | ".join([*ds, q])

    agg = answer_under_orderings(scorer, demos, "q?", ["A", "B"], perms, prompt_fn)
    assert scorer.prompts[1] == "A | A | B | q?"
    assert agg.per_prompt.tolist() == [0, 1, 0, 1]  # last demo: A, B, A, B
    assert agg.vote == 0 and agg.pairwise == pytest.approx(2 / 6)
    agg2 = answer_under_prompts(scorer, ["x | A | q", "x | B | q", "y | B | q"], ["A", "B"])
    assert agg2.vote == 1 and agg2.agreement_vote == pytest.approx(2 / 3)
