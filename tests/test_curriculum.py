"""RL family sampling: weights follow the chance that a group's rewards disagree."""

import numpy as np
import pytest

from jaxrl_desktop.curriculum import (
    family_weights,
    informative_probability,
    sample_families,
    update_stats,
)


def test_informative_probability_closed_form():
    p = np.array([0.0, 0.5, 1.0, 0.9])
    got = informative_probability(p, 8)
    np.testing.assert_allclose(got, [0.0, 1 - 2 * 0.5**8, 0.0, 1 - 0.9**8 - 0.1**8])


def test_weights_favour_families_that_sometimes_succeed():
    stats = {"always": [400.0, 400.0], "never": [0.0, 400.0], "half": [200.0, 400.0]}
    fams = ["always", "never", "half", "unseen"]
    w = family_weights(stats, fams, group_size=8, floor=0.1)
    assert w.sum() == pytest.approx(1.0)
    assert w[2] == pytest.approx(w[3])  # unseen = the uniform prior, p = 0.5
    assert w[2] > 5 * w[0] and w[2] > 5 * w[1]
    assert w[0] == pytest.approx(w[1])  # both at the floor: never dropped
    assert w[0] == pytest.approx(0.1 / (0.1 + 0.1 + 2 * (1 - 2 * 0.5**8)))


def test_floor_one_is_uniform():
    stats = {"a": [9.0, 10.0], "b": [5.0, 10.0]}
    np.testing.assert_allclose(family_weights(stats, ["a", "b"], 8, floor=1.0), [0.5, 0.5])


def test_update_decays_old_counts_and_adds_new_outcomes():
    stats = {"a": [4.0, 8.0]}
    out = update_stats(stats, [("a", True), ("b", False), ("b", True)], decay=0.5)
    assert out == {"a": [3.0, 5.0], "b": [1.0, 2.0]}
    assert stats == {"a": [4.0, 8.0]}  # the input is left as it was (it may sit in a checkpoint)


def test_sampling_follows_the_weights():
    rng = np.random.default_rng(0)
    got = sample_families(rng, ["x", "y"], np.array([0.9, 0.1]), 2000)
    assert 0.85 < got.count("x") / 2000 < 0.95
