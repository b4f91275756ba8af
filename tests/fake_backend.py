"""A tiny deterministic backend for server tests: a counter desktop whose a11y echoes actions.

Actions: ``done()`` terminates with reward 1; ``fail()`` terminates with reward 0; ``hang(s)``
sleeps ``s`` seconds (deadline tests: the worker can cancel it); ``stall(s)`` sleeps ``s`` seconds
with SIGALRM blocked, like a hang inside C code the worker cannot interrupt (its watchdog must
kill the worker); ``crash()`` kills the worker process; ``boom()`` raises; anything else counts
as a step (``bad`` in the text gives an ``error``). Resetting family ``hang`` sleeps ``seed``
milliseconds. Episodes are truncated after ``max_steps``. Register with ``import fake_backend``
or ``--backend_module <this file>``.
"""

from __future__ import annotations

import os
import re
import signal
import time

import numpy as np

from env_server.actions import ActionSchema
from env_server.backend import Backend, register_backend
from env_server.types import Observation, TaskRef

PATH = os.path.abspath(__file__)
SCREEN = (24, 32)
_HANG = re.compile(r"hang\(\s*([0-9.]+)\s*\)")
_STALL = re.compile(r"stall\(\s*([0-9.]+)\s*\)")
KNOBS = ("hang(", "stall(", "crash()", "boom()")  # actions with side effects (fuzzers avoid them)


class FakeBackend(Backend):
    name = "fake"
    schema = ActionSchema.build()
    screen_shape = SCREEN

    def __init__(self, max_steps: int = 50, payload_bytes: int = 0):
        self.max_steps = max_steps
        self.payload = "x" * payload_bytes
        self.task: TaskRef | None = None
        self.steps = 0
        self.last = ""

    def _obs(self, screenshot: bool, **kw) -> Observation:
        assert self.task is not None
        shot = None
        if screenshot:
            shot = np.full((*SCREEN, 3), self.steps % 256, dtype=np.uint8)
            shot[0, 0] = (self.task.seed % 256, 1, 2)
        return Observation(
            instruction=f"count to done ({self.task.family or 'any'}/{self.task.seed}/{self.task.split})",
            a11y=f"counter {self.steps}\nlast {self.last}{self.payload}",
            step=self.steps, task_id=f"fake/{self.task.family}/{self.task.seed}",
            screenshot=shot, info={"seed": str(self.task.seed)}, **kw)

    def reset(self, task: TaskRef, *, screenshot: bool = False) -> Observation:
        if task.family == "invalid":
            raise ValueError("unknown task family 'invalid'")
        if task.family == "hang":
            time.sleep(task.seed / 1000)
        self.task, self.steps, self.last = task, 0, ""
        return self._obs(screenshot)

    def step(self, action: str, *, screenshot: bool = False) -> Observation:
        self.steps += 1
        self.last = action
        if m := _HANG.fullmatch(action.strip()):
            time.sleep(float(m.group(1)))
        elif m := _STALL.fullmatch(action.strip()):
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            try:
                time.sleep(float(m.group(1)))
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        elif action == "crash()":
            os._exit(3)
        elif action == "boom()":
            raise RuntimeError("boom")
        if action in ("done()", "fail()"):
            return self._obs(screenshot, terminated=True, reward=float(action == "done()"))
        error = "bad action" if "bad" in action else ""
        return self._obs(screenshot, truncated=self.steps >= self.max_steps, error=error)

    def evaluate(self) -> float:
        return float(self.last == "done()")


register_backend("fake", FakeBackend)


def fake_config(**overrides):
    """A ``ServerConfig`` for the fake backend on 127.0.0.1 (free port, 2 workers)."""
    from env_server.server import ServerConfig

    base = dict(backend="fake", backend_modules=(PATH,), workers=2, port=0, grace_s=2.0,
                step_timeout_s=30.0)
    return ServerConfig(**{**base, **overrides})
