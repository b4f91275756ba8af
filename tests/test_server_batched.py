"""The batched desktop.v1 service through BatchedClient / FleetClient / the Gymnasium adapter."""

from __future__ import annotations

import time
from collections import defaultdict

import grpc
import numpy as np
import pytest
from fake_backend import SCREEN, fake_config

from env_server.client import BatchedClient, EnvError, check
from env_server.fleet import FleetClient
from env_server.gym_adapter import DesktopGymEnv
from env_server.proto import desktop_pb2 as pb
from env_server.proto import desktop_pb2_grpc as pb_grpc
from env_server.server import ServerThread
from env_server.types import TaskRef

OK = grpc.StatusCode.OK


@pytest.fixture(scope="module")
def server():
    with ServerThread(fake_config(backend_kwargs={"max_steps": 6}, max_envs=300)) as st:
        yield st


@pytest.fixture
def client(server):
    with BatchedClient(server.address, timeout=20.0) as c:
        yield c


def test_64_envs_async_no_loss_no_duplicates(client):
    n = 64
    ids = client.create(n)
    assert len(set(ids)) == n
    resets = check(client.reset(ids, [TaskRef("count", seed=i) for i in range(n)]))
    assert [r.env_id for r in resets] == ids
    assert all(r.episode_id == 1 and r.step_index == 0 for r in resets)
    last = {r.env_id: (r.episode_id, r.step_index) for r in resets}
    seen: dict[int, list[tuple[int, int]]] = defaultdict(list)

    client.send(ids, ["x"] * n)
    outstanding, total = n, 0
    deadline = time.monotonic() + 60
    while total < 1500 and time.monotonic() < deadline:
        results = client.recv(1, timeout=10)
        assert results, "no results within 10 s"
        outstanding -= len(results)
        again, redo = [], []
        for r in results:
            assert r.ok, r
            ep, st = last[r.env_id]
            expected = (ep, st + 1) if r.kind == "step" else (ep + 1, 0)
            assert (r.episode_id, r.step_index) == expected, (r.env_id, last[r.env_id], r)
            last[r.env_id] = expected
            seen[r.env_id].append(expected)
            (redo if r.done else again).append(r.env_id)
            total += 1
        if again:
            client.send(again, [f"act{total}"] * len(again))
        if redo:
            client.send_reset(redo, [TaskRef("count", seed=e) for e in redo])
        outstanding += len(again) + len(redo)
    assert total >= 1500
    while outstanding:  # drain
        outstanding -= len(client.recv(outstanding, timeout=10))
    assert all(len(set(v)) == len(v) for v in seen.values())  # no duplicates
    assert min(last[e][0] for e in ids) >= 3  # every env went through several episodes (max 6 steps)
    check(client.close(ids))


def test_blocking_step_returns_in_request_order(client):
    ids = client.create(8)
    client.reset(ids, list(range(8)))
    order = ids[::-1]
    results = client.step(order, [f"a{e}" for e in order])
    assert [r.env_id for r in results] == order
    assert all(f"last a{r.env_id}" in r.observation.a11y for r in results)
    client.close(ids)


def test_per_item_errors_do_not_kill_the_stream(client):
    ids = client.create(2)
    a, b = ids
    results = client.reset([a, 999_999, b], [TaskRef(seed=1), TaskRef(seed=1), TaskRef("invalid", 1)])
    assert [r.code for r in results] == [OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT]
    assert "999999 does not exist" in results[1].message
    assert "unknown task family" in results[2].message
    # b never got an episode; stepping it is a precondition failure, a is fine
    results = client.step([a, b], ["x", "x"])
    assert [r.code for r in results] == [OK, grpc.StatusCode.FAILED_PRECONDITION]
    assert "reset it first" in results[1].message
    # a backend exception is an INTERNAL item error; the env then needs a reset
    [r] = client.step([a], ["boom()"])
    assert r.code == grpc.StatusCode.INTERNAL and "boom" in r.message
    [r] = client.step([a], ["done()"])
    assert r.code == grpc.StatusCode.FAILED_PRECONDITION
    # finished episodes must be reset
    client.reset([a], [1])
    [r] = client.step([a], ["done()"])
    assert r.ok and r.done and r.reward == 1.0
    [r] = client.step([a], ["x"])
    assert r.code == grpc.StatusCode.FAILED_PRECONDITION and "finished episode 2" in r.message
    with pytest.raises(EnvError, match="FAILED_PRECONDITION"):
        check([r])
    assert client.step([], []) == []
    check(client.close(ids))
    [r] = client.close([a])
    assert r.code == grpc.StatusCode.NOT_FOUND


def test_screenshot_modes(client):
    [e] = client.create(1)
    [r] = client.reset([e], [TaskRef(seed=5)], screenshot="none")
    assert r.observation.screenshot is None
    [raw] = client.step([e], ["x"], screenshot="raw")
    [png] = client.reset([e], [TaskRef(seed=5)], screenshot="png")
    [png] = client.step([e], ["x"], screenshot="png")
    assert raw.observation.screenshot.shape == (*SCREEN, 3)
    assert raw.observation.screenshot.dtype == np.uint8
    np.testing.assert_array_equal(raw.observation.screenshot, png.observation.screenshot)
    assert tuple(raw.observation.screenshot[0, 0]) == (5, 1, 2)
    client.close([e])


def test_item_deadline(client):
    ids = client.create(2)
    client.reset(ids, [1, 2])
    t0 = time.monotonic()
    [r] = client.step([ids[0]], ["hang(5)"], timeout=0.3)
    assert r.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 4.0  # answered at the deadline, not after the 5 s hang
    # the worker cancelled the hanging call: the episode is truncated and the env needs a reset
    assert r.truncated and r.done and "cancelled" in r.message
    [r] = client.step([ids[0]], ["x"], timeout=10)
    assert r.code == grpc.StatusCode.FAILED_PRECONDITION and "cancelled" in r.message
    assert client.reset([ids[0]], [1])[0].ok and client.step([ids[0]], ["x"])[0].ok
    client.close(ids)


def test_env_limit_is_per_item_resource_exhausted(server, client):
    live = client.info().envs
    results = client.create_async(300 - live + 2).result()
    codes = [r.code for r in results]
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 2
    assert "env limit" in results[-1].message
    client.close([r.env_id for r in results if r.ok])


def test_envs_are_freed_when_the_stream_ends(server):
    with BatchedClient(server.address) as probe:
        base = probe.info().envs
        with BatchedClient(server.address) as c:
            c.create(5)
            assert probe.info().envs == base + 5
        deadline = time.monotonic() + 10
        while probe.info().envs != base and time.monotonic() < deadline:
            time.sleep(0.05)
        assert probe.info().envs == base


def test_unary_batch_and_info(server):
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.DesktopEnvStub(channel)
    info = stub.Info(pb.InfoRequest(), timeout=5)
    assert info.backend == "fake" and info.workers == 2
    assert (info.screen_height, info.screen_width) == SCREEN
    assert "click(" in info.action_schema
    created = stub.Batch(pb.Request(request_id=7, create=pb.CreateRequest(count=3)), timeout=10)
    ids = [r.env_id for r in created.results]
    assert len(ids) == 3 and all(r.request_id == 7 and r.kind == pb.CREATE for r in created.results)
    reset = stub.Batch(pb.Request(reset=pb.ResetRequest(
        items=[pb.ResetItem(env_id=e, task=pb.TaskRef(seed=e)) for e in ids])), timeout=10)
    assert sorted(r.index for r in reset.results) == [0, 1, 2]
    t0 = time.monotonic()
    try:  # the call deadline bounds the items: the hung step is cancelled just before it
        hung = stub.Batch(pb.Request(step=pb.StepRequest(
            items=[pb.StepItem(env_id=ids[0], action="hang(6)")])), timeout=0.3)
        assert hung.results[0].status.code == pb.DEADLINE_EXCEEDED
        assert hung.results[0].observation.truncated
    except grpc.RpcError as err:  # (or the answer missed the call deadline on a busy machine)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 5.0  # not after the 6 s hang
    empty = stub.Batch(pb.Request(request_id=9), timeout=5)
    assert empty.results[0].status.code == pb.INVALID_ARGUMENT
    closed = stub.Batch(pb.Request(close=pb.CloseRequest(env_ids=ids)), timeout=10)
    assert all(r.status.code == pb.OK for r in closed.results)
    channel.close()


def test_worker_crash_fails_its_items_and_server_recovers(server, client):
    ids = client.create(4)
    client.reset(ids, [1, 2, 3, 4])
    victim = ids[0]
    [r] = client.step([victim], ["crash()"])
    # the episode is truncated; the env is recreated on the restarted worker (same id)
    assert r.code == grpc.StatusCode.ABORTED and "died" in r.message and r.truncated
    [r] = client.step([victim], ["x"])
    assert r.code == grpc.StatusCode.FAILED_PRECONDITION and "reset it first" in r.message
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the worker is restarted; new envs work on both workers
        fresh = client.create(4)
        if all(r.ok for r in client.reset(fresh, [1, 2, 3, 4])):
            break
        time.sleep(0.2)
    assert all(r.ok for r in client.step(fresh, ["x"] * 4))
    survivors = [e for e in ids[1:] if client.step([e], ["x"])[0].ok]
    assert survivors  # envs on the other worker were untouched
    client.close(fresh + survivors)


def test_fleet_client_spreads_and_translates(server):
    with ServerThread(fake_config(workers=1)) as other, \
            FleetClient([server.address, other.address], timeout=20) as fleet:
        ids = fleet.create(9)
        assert ids == list(range(1, 10))
        places = {fleet.server_of(e) for e in ids}
        assert places == {server.address, other.address}
        assert sum(fleet.server_of(e) == server.address for e in ids) == 6  # 2:1 by workers
        resets = check(fleet.reset(ids, list(range(9))))
        assert [r.env_id for r in resets] == ids
        results = check(fleet.step(ids, [f"a{e}" for e in ids]))
        assert [r.env_id for r in results] == ids
        assert all(f"last a{r.env_id}" in r.observation.a11y for r in results)
        fleet.send(ids[::-1], ["y"] * 9)
        got = []
        while len(got) < 9:
            batch = fleet.recv(1, timeout=10)
            assert batch
            got += batch
        assert sorted(r.env_id for r in got) == ids
        assert all(r.step_index == 2 for r in got)
        assert sorted(r.index for r in got) == list(range(9))
        check(fleet.close())


def test_gym_adapter(server):
    from gymnasium.utils.env_checker import check_env

    env = DesktopGymEnv(server.address, family="count", screenshot=True)
    try:
        assert env.observation_space["screenshot"].shape == (*SCREEN, 3)
        obs, info = env.reset(seed=3)
        assert obs["instruction"] == "count to done (count/3/train)"
        assert env.episode_id == 1 and info["step_index"] == 0
        assert env.observation_space.contains(obs)
        obs, reward, terminated, truncated, info = env.step("click(#1)")
        assert (reward, terminated, truncated) == (0.0, False, False) and info["step_index"] == 1
        obs, reward, terminated, truncated, info = env.step("done()")
        assert (reward, terminated) == (1.0, True)
        check_env(env, skip_render_check=True)
    finally:
        env.close()
