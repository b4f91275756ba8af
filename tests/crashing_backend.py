"""Backends whose reset kills the worker process for some tasks (a "poison" task), for fault tests.

``crashy``: the fake backend (see ``fake_backend``); resetting family ``crash`` exits the process.
``crashy_sim``: the sim backend; resetting a task whose seed is a positive multiple of ``poison_every``
(keyword, default 0 = never) exits the process, like a task generator with a fatal bug.
``faulty_sim``: the sim backend whose first step of an episode kills its worker (SIGKILL) when the
task seed is a multiple of ``kill_every``, and hangs for ``hang_s`` seconds when the seed is 1 more
than a multiple of ``hang_every`` (both 0 = never): a crashing VM and a hung accessibility read.
Register with ``--backend_module <this file>`` (the ``fake_backend`` module must be importable:
``tests/`` on ``sys.path``, as under pytest and in ``ServerProcess`` workers started from it).
"""

from __future__ import annotations

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_backend import FakeBackend

from env_server.backend import register_backend
from env_server.sim.backend import SimBackend

PATH = os.path.abspath(__file__)
EXIT_CODE = 7


class CrashyBackend(FakeBackend):
    name = "crashy"

    def reset(self, task, *, screenshot: bool = False):
        if task.family == "crash":
            os._exit(EXIT_CODE)
        return super().reset(task, screenshot=screenshot)


class CrashySimBackend(SimBackend):
    name = "crashy_sim"

    def __init__(self, poison_every: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.poison_every = poison_every

    def reset(self, task, *, screenshot: bool = False):
        if self.poison_every and task.seed and task.seed % self.poison_every == 0:
            os._exit(EXIT_CODE)
        return super().reset(task, screenshot=screenshot)


class FaultySimBackend(SimBackend):
    name = "faulty_sim"

    def __init__(self, kill_every: int = 0, hang_every: int = 0, hang_s: float = 60.0, **kwargs):
        super().__init__(**kwargs)
        self.kill_every, self.hang_every, self.hang_s = kill_every, hang_every, hang_s
        self._seed, self._steps = 0, 0

    def reset(self, task, *, screenshot: bool = False):
        self._seed, self._steps = task.seed, 0
        return super().reset(task, screenshot=screenshot)

    def step(self, action: str, *, screenshot: bool = False):
        self._steps += 1
        if self._steps == 1:
            if self.kill_every and self._seed % self.kill_every == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            if self.hang_every and self._seed % self.hang_every == 1:
                time.sleep(self.hang_s)
        return super().step(action, screenshot=screenshot)


register_backend("crashy", CrashyBackend)
register_backend("faulty_sim", FaultySimBackend)
register_backend("crashy_sim", CrashySimBackend)
