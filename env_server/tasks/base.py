"""Task families: parameters, instruction, setup, a verifier over the final state, and a scripted expert
that solves the task in API style and in GUI-only style.

Splits are deterministic. A family is either a *train* family (it appears in both splits, with disjoint
parameter values) or a *held-out* family (it appears only in the held-out split). Parameter values are
assigned to a split by a stable hash, so the same value never appears in both.
"""

from __future__ import annotations

import random
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from env_server.sim.desktop import Desktop
    from env_server.tasks.gui import GuiContext

SPLITS = ("train", "heldout")
HELDOUT_EVERY = 4  # one value in four is held out


def is_heldout_value(value: str) -> bool:
    """Stable split assignment of a parameter value."""
    return zlib.crc32(value.encode()) % HELDOUT_EVERY == 0


def pick(rng: random.Random, pool: Sequence[str], split: str, k: int = 1) -> list[str]:
    """``k`` distinct values of ``pool`` that belong to ``split`` (see :func:`is_heldout_value`)."""
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
