"""Which task families RL samples: more of those whose groups are likely to be informative.

A GRPO group carries signal only if its rollouts disagree (some succeed, some fail). With a family's
success rate ``p`` and groups of ``G`` rollouts, that happens with probability ``1 - p**G - (1-p)**G``;
families the policy always solves or always fails give no gradient and only cost rollouts. The
weights below follow that probability, estimated from the family's recent rollouts (a decayed count
with a uniform prior), with a floor so that no family is dropped for good.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Stats = dict[str, list[float]]  # family -> [decayed successes, decayed episodes]


def informative_probability(p: np.ndarray, group_size: int) -> np.ndarray:
    """Chance that a group of ``group_size`` rollouts with success rate ``p`` has mixed rewards."""
    return 1.0 - p**group_size - (1.0 - p) ** group_size


def family_weights(stats: Mapping[str, Sequence[float]], families: Sequence[str], group_size: int,
                   floor: float) -> np.ndarray:
    """Sampling probabilities over ``families`` (unseen families count as p = 0.5)."""
    s = np.array([stats.get(f, (0.0, 0.0))[0] for f in families], np.float64)
    n = np.array([stats.get(f, (0.0, 0.0))[1] for f in families], np.float64)
    p = (s + 1.0) / (n + 2.0)
    w = np.maximum(informative_probability(p, group_size), floor)
    return w / w.sum()


def update_stats(stats: Stats, outcomes: Sequence[tuple[str, bool]], decay: float) -> Stats:
    """Decay every family's counts by ``decay`` and add this iteration's (family, success) outcomes."""
    out = {f: [s * decay, n * decay] for f, (s, n) in stats.items()}
    for fam, ok in outcomes:
        cur = out.setdefault(fam, [0.0, 0.0])
        cur[0] += float(ok)
        cur[1] += 1.0
    return out


def sample_families(rng: np.random.Generator, families: Sequence[str], weights: np.ndarray, n: int) -> list[str]:
    return [families[k] for k in rng.choice(len(families), size=n, p=weights)]
