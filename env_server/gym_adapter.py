"""A Gymnasium view of one remote desktop env (Text actions, Dict observations)."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from env_server.actions import MAX_ACTION_CHARS
from env_server.client import BatchedClient, EnvError, StepResult
from env_server.types import TaskRef

MAX_TEXT_CHARS = 1 << 20


class AnyText(spaces.Text):
    """A Text space that accepts any unicode string up to ``max_length`` (sampling stays ASCII)."""

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length


class DesktopGymEnv(gym.Env):
    """One env on a server. Observations: ``instruction``, ``a11y`` (and ``screenshot`` if asked).

    ``reset(seed=s)`` runs task ``TaskRef(family, s, split)``; without a seed, seeds are drawn from
    the env's RNG. ``options`` may override ``family`` / ``split`` or pass a whole ``task``.
    ``info`` carries ``error``, ``task_id``, ``step_index`` and the backend's info; the server's
    episode counter is ``self.episode_id``.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"]}

    def __init__(self, address: str | None = None, *, client: BatchedClient | None = None,
                 family: str = "", split: str = "train", screenshot: bool = False,
                 render_mode: str | None = None, timeout: float | None = 60.0, **client_kwargs):
        if (address is None) == (client is None):
            raise ValueError("pass exactly one of address or client")
        self._own_client = client is None
        self.client = client or BatchedClient(address, timeout=timeout, **client_kwargs)
        self.family, self.split = family, split
        self.render_mode = render_mode
        self.screenshot = screenshot or render_mode == "rgb_array"
        self.timeout = timeout
        self.env_id = self.client.create(1)[0]
        obs_spaces: dict[str, spaces.Space] = {
            "instruction": AnyText(MAX_TEXT_CHARS, min_length=0),
            "a11y": AnyText(MAX_TEXT_CHARS, min_length=0),
        }
        if self.screenshot:
            info = self.client.info()
            shape = (info.screen_height or 1, info.screen_width or 1, 3)
            obs_spaces["screenshot"] = spaces.Box(0, 255, shape, dtype=np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = AnyText(MAX_ACTION_CHARS, min_length=1)
        self._last: StepResult | None = None
        self.episode_id = 0
        self._closed = False

    def _mode(self) -> str:
        return "raw" if self.screenshot else "none"

    def _unpack(self, result: StepResult) -> tuple[dict, dict]:
        if not result.ok:
            raise EnvError([result])
        self._last = result
        o = result.observation
        obs = {"instruction": o.instruction, "a11y": o.a11y}
        if self.screenshot:
            obs["screenshot"] = o.screenshot
        self.episode_id = result.episode_id  # not in info: info must be reproducible from the seed
        info = {**o.info, "error": o.error, "task_id": o.task_id, "step_index": result.step_index}
        return obs, info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "task" in options:
            task = options["task"]
        else:
            task_seed = seed if seed is not None else int(self.np_random.integers(2**31 - 1))
            task = TaskRef(options.get("family", self.family), task_seed,
                           options.get("split", self.split))
        [result] = self.client.reset([self.env_id], [task], screenshot=self._mode(),
                                     timeout=self.timeout)
        return self._unpack(result)

    def step(self, action: str):
        [result] = self.client.step([self.env_id], [action], screenshot=self._mode(),
                                    timeout=self.timeout)
        obs, info = self._unpack(result)
        o = result.observation
        return obs, float(o.reward), bool(o.terminated), bool(o.truncated), info

    def render(self):
        if self.render_mode == "rgb_array" and self._last is not None:
            return self._last.observation.screenshot
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.client.close([self.env_id])
        finally:
            if self._own_client:
                self.client.shutdown()
