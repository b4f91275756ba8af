"""Episodes against the env server: lockstep batched rollouts of any policy over a batched client.

A policy sees one :class:`StepView` per live env and returns one :class:`Choice` per view. The
rollout keeps, for every step, what the learner needs later (prompt and action token ids and the
sampler's per-token log-probs) plus the (env id, episode id, step index) the server stamped on it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from env_server.client import StepResult
from env_server.tasks.baselines import random_action
from env_server.tasks.expert import Expert, ExpertError
from env_server.tasks.registry import make_task
from env_server.types import Observation, TaskRef
from jaxrl_desktop.prompt import feedback_text


@dataclass
class StepView:
    """What a policy may look at for one env at one step."""

    task: TaskRef
    instruction: str
    a11y: str
    history: list[str]
    feedback: str
    obs: Observation


@dataclass
class Choice:
    """A policy's action; model policies also fill the token ids and log-probs."""

    text: str
    prompt_ids: list[int] | None = None
    action_ids: list[int] | None = None
    logprobs: np.ndarray | None = None  # per action token, under the sampling-time model
    entropy: np.ndarray | None = None  # the model's entropy at each action token


@dataclass
class Step:
    view: StepView  # what the policy saw
    choice: Choice
    error: str
    step_index: int
    parsed: bool = True  # the env parsed the action (False = malformed / ill-typed)


@dataclass
class Episode:
    task: TaskRef
    instruction: str
    env_id: int = 0
    episode_id: int = 0
    steps: list[Step] = field(default_factory=list)
    reward: float = 0.0
    finished: bool = False  # the env ended the episode (done/fail/out of steps)
    # non-empty when an env fault cut the episode (worker crash, hung step, lost server): the status
    # code name and message. Such an episode says nothing about the policy: learners drop it.
    aborted: str = ""
    abort_code: str = ""

    @property
    def success(self) -> bool:
        return self.reward > 0.5

    @property
    def family(self) -> str:
        return self.task.family or make_task(self.task).family


class Policy(Protocol):
    def act(self, views: Sequence[StepView]) -> list[Choice]: ...


class EnvClient(Protocol):
    def reset(self, env_ids: Sequence[int], tasks: Sequence[TaskRef], **kw) -> list[StepResult]: ...
    def step(self, env_ids: Sequence[int], actions: Sequence[str], **kw) -> list[StepResult]: ...


def _check_request(results: Sequence[StepResult], what: str) -> None:
    """Raise if the server rejected a whole request (wrong token, malformed request, server gone
    without a fleet to fail over to): that is not an env fault an episode can absorb."""
    bad = [r for r in results if r.request_error]
    if bad:
        r = bad[0]
        raise RuntimeError(f"env server rejected the {what} request: {r.code.name}: {r.message}")


def run_episodes(
    client: EnvClient,
    env_ids: Sequence[int],
    tasks: Sequence[TaskRef],
    policy: Policy,
    max_steps: int | None = None,
) -> list[Episode]:
    """Run one episode of ``tasks[i]`` on ``env_ids[i]`` for every i, all envs in lockstep.

    ``max_steps`` caps the policy's steps (the env's own step limit applies too); an episode cut by
    the cap counts as unsuccessful. An env fault on one env (its worker killed, a step past its
    deadline, its server lost: any non-OK item) ends that episode with :attr:`Episode.aborted` set;
    the other envs go on.
    """
    if len(tasks) > len(env_ids):
        raise ValueError(f"{len(tasks)} tasks but only {len(env_ids)} envs")
    ids = list(env_ids[: len(tasks)])
    results = client.reset(ids, list(tasks))
    _check_request(results, "reset")
    episodes, views, live = [], {}, []
    for env_id, task, r in zip(ids, tasks, results, strict=True):
        obs = r.observation
        ep = Episode(task=task, instruction=obs.instruction if obs else "", env_id=env_id,
                     episode_id=r.episode_id)
        episodes.append(ep)
        if not r.ok:
            ep.aborted, ep.abort_code = f"reset: {r.code.name}: {r.message}", r.code.name
            continue
        views[env_id] = StepView(task, obs.instruction, obs.a11y, [], "", obs)
        live.append(env_id)
    by_env = dict(zip(ids, episodes, strict=True))
    while live:
        choices = policy.act([views[e] for e in live])
        results = client.step(live, [c.text for c in choices])
        _check_request(results, "step")
        still = []
        for env_id, choice, r in zip(live, choices, results, strict=True):
            ep, obs = by_env[env_id], r.observation
            if not r.ok:
                ep.aborted, ep.abort_code = f"step {len(ep.steps)}: {r.code.name}: {r.message}", r.code.name
                continue
            parsed = not obs.error or "action" in obs.info  # the sim reports the parsed form
            seen = views[env_id]
            ep.steps.append(Step(seen, choice, obs.error, r.step_index, parsed))
            views[env_id] = StepView(seen.task, seen.instruction, obs.a11y, [*seen.history, choice.text],
                                     feedback_text(obs.error, obs.info.get("result", "")), obs)
            if obs.last:
                ep.reward, ep.finished = float(obs.reward), True
            elif max_steps is not None and len(ep.steps) >= max_steps:
                ep.reward = 0.0
            else:
                still.append(env_id)
        live = still
    return episodes


class ExpertPolicy:
    """The scripted expert (API or GUI style) as a :class:`Policy`; resets itself per task."""

    def __init__(self, style: str = "api"):
        self.style = style
        self._experts: dict[tuple, Expert] = {}

    def act(self, views: Sequence[StepView]) -> list[Choice]:
        out = []
        for v in views:
            key = (v.task, v.instruction)
            if not v.history or key not in self._experts:
                self._experts[key] = Expert(make_task(v.task), self.style)
            try:
                out.append(Choice(self._experts[key].act(v.obs)))
            except ExpertError:
                out.append(Choice("fail()"))
        return out


class RandomPolicy:
    """Uniformly random well-formed actions (see :func:`env_server.tasks.baselines.random_action`)."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def act(self, views: Sequence[StepView]) -> list[Choice]:
        return [Choice(random_action(self.rng, v.obs)) for v in views]


def completed(episodes: Sequence[Episode]) -> list[Episode]:
    """The episodes no env fault cut short (the ones that measure the policy)."""
    return [e for e in episodes if not e.aborted]


def step_rewards(episode: Episode) -> list[float]:
    """Step-level rewards: the trajectory's verifier reward on every well-formed step, 0 on steps
    the env could not parse (a successful trajectory does not make its malformed actions good)."""
    return [episode.reward if st.parsed else 0.0 for st in episode.steps]


def success_rate(episodes: Sequence[Episode]) -> float:
    """Success over the episodes no env fault cut short."""
    done = completed(episodes)
    return float(np.mean([e.success for e in done])) if done else 0.0


def invalid_rate(episodes: Sequence[Episode]) -> float:
    steps = [s for e in completed(episodes) for s in e.steps]
    return float(np.mean([not s.parsed for s in steps])) if steps else 0.0
