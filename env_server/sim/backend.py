"""The ``sim`` backend: one simulated desktop running one task at a time."""

from __future__ import annotations

import logging

from env_server.actions import ActionError
from env_server.backend import Backend, register_backend
from env_server.sim import SIM_SCHEMA
from env_server.sim.apps.base import AppError
from env_server.sim.desktop import Desktop
from env_server.sim.render import render
from env_server.sim.vfs import VFSError
from env_server.tasks.base import Task
from env_server.tasks.registry import family, make_task
from env_server.types import Observation, TaskRef

log = logging.getLogger(__name__)


class SimBackend(Backend):
    name = "sim"
    schema = SIM_SCHEMA

    def __init__(self, max_rows: int = 200, max_steps: int | None = None):
        self.max_rows = max_rows
        self.max_steps_override = max_steps
        self.task: Task | None = None
        self.desktop: Desktop | None = None
        self.steps = 0
        self.over = False
        self.reward = 0.0

    @property
    def max_steps(self) -> int:
        assert self.task is not None
        return self.max_steps_override or self.task.max_steps

    def reset(self, task: TaskRef | Task, *, screenshot: bool = False) -> Observation:
        self.task = task if isinstance(task, Task) else make_task(task)
        self.desktop = Desktop(max_rows=self.max_rows)
        family(self.task.family).setup(self.desktop, self.task.params)
        self.steps = 0
        self.over = False
        self.reward = 0.0
        return self._observe("", {}, screenshot)

    def step(self, action: str, *, screenshot: bool = False) -> Observation:
        if self.desktop is None or self.task is None:
            return Observation("", "", error="no task is running; reset first", terminated=True)
        if self.over:
            obs = self._observe("the episode is over; reset to start a new one", {}, screenshot)
            obs.terminated = True
            return obs
        self.steps += 1
        error, info = "", {}
        try:
            parsed = SIM_SCHEMA.parse(action)
            info["action"] = parsed.to_text()
            result = self.desktop.apply(parsed)
            if result:
                info["result"] = result
        except (ActionError, AppError, VFSError) as err:
            error = str(err)
        except Exception as err:  # a simulator bug must not take the worker down
            log.exception("simulator error on action %r", action)
            error = f"internal simulator error: {type(err).__name__}: {err}"
        terminated = self.desktop.declared is not None
        truncated = not terminated and self.steps >= self.max_steps
        if terminated or truncated:
            self.over = True
            self.reward = self.evaluate()
        obs = self._observe(error, info, screenshot)
        obs.terminated, obs.truncated = terminated, truncated
        obs.reward = self.reward if self.over else 0.0
        return obs

    def evaluate(self) -> float:
        if self.desktop is None or self.task is None:
            return 0.0
        return family(self.task.family).verify(self.desktop, self.task.params)

    def screenshot(self):
        assert self.desktop is not None
        return render(self.desktop.frame())

    def _observe(self, error: str, info: dict, screenshot: bool) -> Observation:
        desktop, task = self.desktop, self.task
        return Observation(
            instruction=task.instruction,
            a11y=desktop.a11y_text(),
            error=error,
            step=self.steps,
            task_id=task.task_id,
            screenshot=render(desktop.frame()) if screenshot else None,
            info=info,
        )


register_backend("sim", SimBackend)
