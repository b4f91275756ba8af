"""Observation and task-reference types shared by backends, the server and the clients."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TaskRef:
    """Which task an env should run: a family and a seed, or a seed alone to sample from a split.

    ``family=""`` samples a family of ``split`` from ``seed`` (deterministic).
    """

    family: str = ""
    seed: int = 0
    split: str = "train"


@dataclass
class Observation:
    """What an env returns after ``reset`` or ``step``."""

    instruction: str
    a11y: str
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    error: str = ""
    step: int = 0
    task_id: str = ""
    screenshot: np.ndarray | None = None  # (H, W, 3) uint8, only when requested
    info: dict[str, str] = field(default_factory=dict)

    @property
    def last(self) -> bool:
        return self.terminated or self.truncated
