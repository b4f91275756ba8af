"""Task families: parameters, instruction, setup, a verifier over the final state, and a scripted expert
that solves the task in API style and in GUI-only style.

Splits are deterministic. A family is either a *train* family (it appears in every split, with disjoint
parameter values) or a *held-out* family (it appears only in the held-out split). Pool values are
assigned to ``train`` or ``heldout`` by a stable hash, so the same value never appears in both. The
``novel`` split runs the train families on values invented per task (:func:`invent`, splices of train
values): names no pool holds, so neither expert demonstrations (drawn from ``train``) nor evaluation
(``heldout``) ever use them. RL explores there: a verifier needs no demonstration.
"""

from __future__ import annotations

import random
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from env_server.sim.desktop import Desktop
    from env_server.tasks.gui import GuiContext

SPLITS = ("train", "heldout", "novel")
HELDOUT_EVERY = 4  # one value in four is held out


def is_heldout_value(value: str) -> bool:
    """Stable split assignment of a parameter value."""
    return zlib.crc32(value.encode()) % HELDOUT_EVERY == 0


def _splice(rng: random.Random, lexicon: Sequence[str]) -> str:
    a, b = rng.sample(lexicon, 2) if len(lexicon) > 1 else (lexicon[0], lexicon[0])
    return a[: rng.randint(1, max(1, len(a) - 1))] + b[rng.randint(1, max(1, len(b) - 1)):]


def invent(rng: random.Random, template: str, lexicon: Sequence[str]) -> str:
    """A made-up value shaped like ``template``: each run of letters becomes the head of one ``lexicon``
    word joined to the tail of another (``Reports`` + ``Recipes`` -> ``Repipes``) in the run's case,
    each digit a random digit; spaces, ``_``, ``-`` and ``.`` stay."""
    out = []
    for run in re.findall(r"[A-Za-z]+|[0-9]+|.", template):
        if run.isdigit():
            out.append("".join(rng.choice("0123456789") for _ in run))
        elif run.isalpha():
            w = _splice(rng, lexicon).lower()
            out.append(w.upper() if run.isupper() and len(run) > 1 else w.capitalize() if run[0].isupper() else w)
        else:
            out.append(run)
    return "".join(out)


def pick(rng: random.Random, pool: Sequence[str], split: str, k: int = 1) -> list[str]:
    """``k`` distinct values of ``pool`` that belong to ``split`` (see :func:`is_heldout_value`).

    For ``novel``, values are invented in the shape of the pool's train values and are never a pool
    value; a pool of plain numbers (volumes, font sizes: a new number could leave the valid range) gives
    train values instead."""
    if split == "novel":
        train = [v for v in pool if not is_heldout_value(v)]
        if all(v.isdigit() for v in train):
            return rng.sample(train, k)
        lexicon = sorted({w for v in train for w in re.findall(r"[A-Za-z]{2,}", v)})
        taken = set(pool)
        out: list[str] = []
        while len(out) < k:
            v = invent(rng, rng.choice(train), lexicon)
            if v not in taken and not is_heldout_value(v):
                taken.add(v)
                out.append(v)
        return out
    want_heldout = split == "heldout"
    eligible = [v for v in pool if is_heldout_value(v) == want_heldout]
    if len(eligible) < k:
        raise ValueError(f"pool has {len(eligible)} {split} values, need {k}: {pool[:4]}...")
    return rng.sample(eligible, k)


@dataclass(frozen=True)
class Task:
    family: str
    split: str
    seed: int
    params: dict[str, Any]
    instruction: str
    max_steps: int
    feasible: bool = True
    apps: tuple[str, ...] = field(default=())

    @property
    def task_id(self) -> str:
        return f"{self.family}/{self.split}/{self.seed}"


class TaskFamily(ABC):
    """One parameterised kind of task."""

    name: ClassVar[str]
    apps: ClassVar[tuple[str, ...]]
    feasible: ClassVar[bool] = True
    max_steps: ClassVar[int] = 20

    @abstractmethod
    def sample(self, rng: random.Random, split: str) -> dict[str, Any]:
        """Draw parameters for ``split``."""

    @abstractmethod
    def instruction(self, p: dict[str, Any]) -> str: ...

    def setup(self, desktop: Desktop, p: dict[str, Any]) -> None:  # noqa: B027
        """Prepare the initial state (files, emails, cells ...). Default: the stock home folder."""

    @abstractmethod
    def check(self, desktop: Desktop, p: dict[str, Any]) -> bool:
        """Whether the final state satisfies the task (for infeasible tasks: nothing was damaged)."""

    @abstractmethod
    def api_plan(self, p: dict[str, Any]) -> list[str]:
        """API-style expert: action lines without the final done()/fail(). For infeasible tasks, the
        probing actions whose errors show that the task cannot be done."""

    @abstractmethod
    def gui_plan(self, p: dict[str, Any], ui: GuiContext) -> Iterator[str]:
        """GUI-only expert: yields one action at a time; ``ui.rows`` holds the latest observation."""

    def verify(self, desktop: Desktop, p: dict[str, Any]) -> float:
        """1.0 if solved. Feasible tasks must not end in fail(); infeasible ones must end in fail()."""
        if self.feasible:
            return float(desktop.declared != "fail" and self.check(desktop, p))
        return float(desktop.declared == "fail" and self.check(desktop, p))

    def make(self, seed: int, split: str) -> Task:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        rng = random.Random(f"{self.name}:{split}:{seed}")
        params = self.sample(rng, split)
        return Task(self.name, split, seed, params, self.instruction(params), self.max_steps,
                    self.feasible, self.apps)
