"""The scripted expert: drives a task family's plan from observations (so it also works over gRPC).

``style="api"`` emits the family's API-call plan; ``style="gui"`` runs its GUI plan, which looks up
widgets in the latest accessibility rows and clicks them by reference (``click(#12)``) or, with
``coords=True``, by their center point.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from env_server.a11y import parse_rows
from env_server.tasks.base import Task
from env_server.tasks.gui import ExpertError, GuiContext
from env_server.tasks.registry import family
from env_server.types import Observation

__all__ = ["Expert", "ExpertError", "GuiContext"]


class Expert:
    """A scripted policy for one task. Call :meth:`act` with each observation."""

    def __init__(self, task: Task, style: Literal["api", "gui"] = "api", coords: bool = False):
        if style not in ("api", "gui"):
            raise ValueError(f"style must be 'api' or 'gui', got {style!r}")
        self.task = task
        self.style = style
        self.family = family(task.family)
        self.ctx = GuiContext(coords=coords)
        final = "done()" if task.feasible else "fail()"
        if style == "api":
            self._plan: Iterator[str] = iter([*self.family.api_plan(task.params), final])
        else:
            self._plan = self._gui(final)

    def _gui(self, final: str) -> Iterator[str]:
        yield from self.family.gui_plan(self.task.params, self.ctx)
        yield final

    def act(self, obs: Observation) -> str:
        if obs.error and obs.step > 0 and self.task.feasible:  # infeasible plans probe and fail
            raise ExpertError(f"{self.task.task_id}: previous action failed: {obs.error}")
        self.ctx.rows = parse_rows(obs.a11y)
        try:
            return next(self._plan)
        except StopIteration:
            raise ExpertError(f"{self.task.task_id}: the plan ended before the episode did") from None
