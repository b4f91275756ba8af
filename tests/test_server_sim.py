"""Integration with the simulated desktop: stock dm_env_rpc client, batched client, gym adapter.

The scripted expert (``env_server.tasks.expert``) plays from observations received over gRPC, so
solving tasks end to end shows observations and actions survive the wire intact.
"""

from __future__ import annotations

import time

import grpc
import pytest
from dm_env_rpc.v1 import connection, dm_env_adaptor

pytest.importorskip("env_server.sim.backend")
from env_server.client import BatchedClient, check
from env_server.gym_adapter import DesktopGymEnv
from env_server.server import ServerConfig, ServerThread
from env_server.tasks.expert import Expert
from env_server.tasks.registry import make_task
from env_server.types import Observation, TaskRef


@pytest.fixture(scope="module")
def server():
    with ServerThread(ServerConfig(backend="sim", workers=2, port=0, grace_s=2.0)) as st:
        yield st


def test_stock_dm_env_rpc_client_solves_sim_tasks(server):
    channel = grpc.insecure_channel(server.address)
    with connection.Connection(channel) as conn:
        env, world = dm_env_adaptor.create_and_join_world(
            conn, create_world_settings={"seed": 11, "split": "train"}, join_world_settings={})
        assert env.observation_spec()["screenshot"].shape[2] == 3
        for episode in range(2):
            task = make_task(TaskRef(seed=11 + episode, split="train"))
            expert = Expert(task, style="gui")
            ts = env.reset()
            assert ts.first() and ts.observation["task_id"] == task.task_id
            assert ts.observation["screenshot"].ndim == 3
            steps = 0
            while not ts.last():
                obs = Observation(ts.observation["instruction"], ts.observation["a11y"],
                                  error=ts.observation["error"], step=steps)
                ts = env.step({"action": expert.act(obs)})
                steps += 1
                assert steps <= task.max_steps
            assert ts.reward == pytest.approx(1.0) and ts.discount == 0.0
        env.close()
    channel.close()
    assert world.startswith("desktop-")


def test_batched_client_runs_64_sim_envs_with_experts(server):
    n = 64
    refs = [TaskRef(seed=100 + i) for i in range(n)]
    experts = {}
    with BatchedClient(server.address, timeout=30) as client:
        ids = client.create(n)
        for env_id, ref, r in zip(ids, refs, check(client.reset(ids, refs)), strict=True):
            experts[env_id] = (Expert(make_task(ref), style="api"), r.observation)
        rewards, last_step = {}, dict.fromkeys(ids, 0)
        client.send(ids, [experts[e][0].act(experts[e][1]) for e in ids])
        deadline = time.monotonic() + 120
        while len(rewards) < n and time.monotonic() < deadline:
            todo = []
            for r in client.recv(1, timeout=10):
                assert r.ok and r.step_index == last_step[r.env_id] + 1, r
                last_step[r.env_id] = r.step_index
                if r.done:
                    rewards[r.env_id] = r.reward
                else:
                    todo.append(r.env_id)
                    experts[r.env_id] = (experts[r.env_id][0], r.observation)
            if todo:
                client.send(todo, [experts[e][0].act(experts[e][1]) for e in todo])
        assert len(rewards) == n and all(v == 1.0 for v in rewards.values())
        shots = client.step_async(ids[:2], ["scroll(1)"] * 2, screenshot="png").result()
        assert all(s.code == grpc.StatusCode.FAILED_PRECONDITION for s in shots)  # episodes over
        [r] = client.reset(ids[:1], [refs[0]], screenshot="png")
        assert r.observation.screenshot.ndim == 3 and r.observation.screenshot.shape[2] == 3
        check(client.close(ids))


def test_gym_adapter_on_sim(server):
    env = DesktopGymEnv(server.address, split="train")
    try:
        obs, info = env.reset(seed=5)
        expert = Expert(make_task(TaskRef(seed=5)), style="api")
        step, done, reward = 0, False, 0.0
        while not done:
            action = expert.act(Observation(obs["instruction"], obs["a11y"], error=info["error"], step=step))
            obs, reward, terminated, truncated, info = env.step(action)
            done, step = terminated or truncated, step + 1
        assert reward == 1.0 and info["task_id"] == make_task(TaskRef(seed=5)).task_id
    finally:
        env.close()
