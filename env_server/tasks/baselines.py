"""Baseline policies that need no model: a uniformly random GUI clicker/typist (the lower bound of
every success table) and helpers shared by evaluation code."""

from __future__ import annotations

import random

from env_server.a11y import parse_rows
from env_server.types import Observation

SCREEN_W, SCREEN_H = 1280, 720


def random_action(rng: random.Random, obs: Observation) -> str:
    """A random but well-formed action: mostly clicks on visible widgets, some typing, keys,
    scrolling, and (rarely) ``done()`` / ``fail()``."""
    rows = parse_rows(obs.a11y)
    choice = rng.random()
    if choice < 0.5 and rows:
        return f"click(#{rng.choice(rows).id})"
    if choice < 0.6:
        return f"click({rng.randrange(SCREEN_W)}, {rng.randrange(SCREEN_H)})"
    if choice < 0.7:
        return f'type("{rng.choice(["a", "hello", "Reports", "1"])}")'
    if choice < 0.8:
        return f'hotkey("{rng.choice(["enter", "escape", "ctrl", "backspace"])}")'
    if choice < 0.85:
        return f"scroll({rng.randint(-3, 3)})"
    if choice < 0.9:
        return f"double_click(#{rng.choice(rows).id})" if rows else "scroll(1)"
    return rng.choice(["done()", "fail()"])
