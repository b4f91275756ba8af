"""The stock dm_env_rpc client (Connection + dm_env_adaptor) drives desktops with no code of ours."""

from __future__ import annotations

import queue
import time

import dm_env
import grpc
import numpy as np
import pytest
from dm_env_rpc.v1 import (
    compliance,
    connection,
    dm_env_adaptor,
    dm_env_rpc_pb2,
    dm_env_rpc_pb2_grpc,
    error,
    tensor_utils,
)
from fake_backend import SCREEN, fake_config

from env_server.server import ServerThread


@pytest.fixture(scope="module")
def server():
    with ServerThread(fake_config(backend_kwargs={"max_steps": 4})) as st:
        yield st


@pytest.fixture
def conn(server):
    channel = grpc.insecure_channel(server.address)
    with connection.Connection(channel) as c:
        yield c
    channel.close()


def test_stock_adaptor_runs_episodes(conn):
    env, world = dm_env_adaptor.create_and_join_world(
        conn, create_world_settings={"family": "count", "seed": 7, "split": "train"},
        join_world_settings={})
    assert world.startswith("desktop-")
    assert env.action_spec()["action"].dtype.kind in "OUS"
    obs_spec = env.observation_spec()
    assert obs_spec["screenshot"].shape == (*SCREEN, 3)
    assert {"instruction", "a11y", "screenshot", "error"} <= set(obs_spec)

    ts = env.reset()
    assert ts.step_type == dm_env.StepType.FIRST
    assert ts.observation["instruction"] == "count to done (count/7/train)"
    assert ts.observation["screenshot"].shape == (*SCREEN, 3)
    assert ts.observation["screenshot"].dtype == np.uint8

    ts = env.step({"action": "click(#1)"})
    assert ts.step_type == dm_env.StepType.MID
    assert "last click(#1)" in ts.observation["a11y"]
    ts = env.step({"action": "bad thing"})
    assert ts.step_type == dm_env.StepType.MID and ts.observation["error"] == "bad action"
    ts = env.step({"action": "done()"})
    assert ts.step_type == dm_env.StepType.LAST
    assert ts.reward == pytest.approx(1.0) and ts.discount == pytest.approx(0.0)

    # the next episode uses seed + 1, and a truncated episode is INTERRUPTED (discount 1)
    ts = env.step({"action": "ignored"})
    assert ts.step_type == dm_env.StepType.FIRST
    assert ts.observation["instruction"] == "count to done (count/8/train)"
    kinds = [env.step({"action": f"a{i}"}).step_type for i in range(4)]
    assert kinds == [dm_env.StepType.MID] * 3 + [dm_env.StepType.LAST]
    ts = env.reset()
    assert ts.step_type == dm_env.StepType.FIRST
    env.close()  # LeaveWorld
    conn.send(dm_env_rpc_pb2.DestroyWorldRequest(world_name=world))


def test_truncation_reports_interrupted_with_discount_one(conn):
    env, _ = dm_env_adaptor.create_and_join_world(conn, {"seed": 1}, {})
    env.reset()
    for _ in range(3):
        env.step({"action": "x"})
    response = conn.send(dm_env_rpc_pb2.StepRequest(
        actions={1: tensor_utils.pack_tensor("x")}, requested_observations=[5]))
    assert response.state == dm_env_rpc_pb2.INTERRUPTED
    assert tensor_utils.unpack_tensor(response.observations[5]) == pytest.approx(1.0)
    env.close()


def test_only_requested_observations_no_screenshot(conn):
    env, _ = dm_env_adaptor.create_and_join_world(
        conn, {"seed": 2}, {}, requested_observations=["a11y"])
    ts = env.reset()
    assert set(ts.observation) == {"a11y"}
    assert "screenshot" not in env.observation_spec()
    env.close()


def test_errors_keep_the_stream_alive(conn):
    with pytest.raises(error.DmEnvRpcError, match="join a world first"):
        conn.send(dm_env_rpc_pb2.StepRequest())
    with pytest.raises(error.DmEnvRpcError, match="unknown setting"):
        dm_env_adaptor.create_world(conn, {"colour": "red"})
    with pytest.raises(error.DmEnvRpcError, match="must be a int"):
        dm_env_adaptor.create_world(conn, {"seed": "abc"})
    with pytest.raises(error.DmEnvRpcError, match="no world named"):
        conn.send(dm_env_rpc_pb2.JoinWorldRequest(world_name="nope"))
    world = dm_env_adaptor.create_world(conn, {"family": "invalid"})
    env = dm_env_adaptor.join_world(conn, world, {})
    with pytest.raises(error.DmEnvRpcError, match="unknown task family") as err:
        env.reset()
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    with pytest.raises(error.DmEnvRpcError, match="joined"):
        conn.send(dm_env_rpc_pb2.DestroyWorldRequest(world_name=world))
    conn.send(dm_env_rpc_pb2.ResetWorldRequest(
        world_name=world, settings={"family": tensor_utils.pack_tensor("ok")}))
    assert env.reset().step_type == dm_env.StepType.FIRST
    env.close()
    conn.send(dm_env_rpc_pb2.DestroyWorldRequest(world_name=world))


def test_backend_exception_is_internal_error(conn):
    env, _ = dm_env_adaptor.create_and_join_world(conn, {"seed": 3}, {})
    env.reset()
    with pytest.raises(error.DmEnvRpcError, match="boom") as err:
        env.step({"action": "boom()"})
    assert err.value.code == grpc.StatusCode.INTERNAL.value[0]
    env.close()


def test_stream_deadline_cuts_a_hanging_step(server):
    channel = grpc.insecure_channel(server.address)
    stub = dm_env_rpc_pb2_grpc.EnvironmentStub(channel)
    requests = queue.SimpleQueue()
    responses = stub.Process(iter(requests.get, None), timeout=1.5)

    def send(**payload):
        requests.put(dm_env_rpc_pb2.EnvironmentRequest(**payload))
        return next(responses)

    world = send(create_world=dm_env_rpc_pb2.CreateWorldRequest()).create_world.world_name
    send(join_world=dm_env_rpc_pb2.JoinWorldRequest(world_name=world))
    send(step=dm_env_rpc_pb2.StepRequest())
    t0 = time.monotonic()
    hang = dm_env_rpc_pb2.StepRequest(actions={1: tensor_utils.pack_tensor("hang(4)")})
    try:
        code = send(step=hang).error.code
    except grpc.RpcError as err:
        code = err.code().value[0]
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert time.monotonic() - t0 < 3.0
    requests.put(None)
    channel.close()
    # the server keeps serving
    with connection.Connection(grpc.insecure_channel(server.address)) as c:
        assert dm_env_adaptor.create_world(c, {"seed": 1}).startswith("desktop-")


# ---------------------------------------------------------------- dm_env_rpc compliance suites
class _Server:
    server: ServerThread

    @pytest.fixture(autouse=True)
    def _connect(self, server):
        self._channel = grpc.insecure_channel(server.address)
        self._connection = connection.Connection(self._channel)
        self._world = self._connection.send(
            dm_env_rpc_pb2.CreateWorldRequest(settings={})).world_name
        yield
        self._channel.close()

    @property
    def connection(self):
        return self._connection

    @property
    def world_name(self):
        return self._world


class TestCreateDestroyCompliance(_Server, compliance.CreateDestroyWorld):
    has_multiple_world_support = True

    @property
    def required_world_settings(self):
        return {}

    @property
    def invalid_world_settings(self):
        return {"bogus": tensor_utils.pack_tensor(1), "seed": tensor_utils.pack_tensor("not a number")}


class TestJoinLeaveCompliance(_Server, compliance.JoinLeaveWorld):
    @property
    def invalid_join_settings(self):
        return {"bogus": tensor_utils.pack_tensor(1)}


class TestResetCompliance(_Server, compliance.Reset):
    def join_world(self):
        return self.connection.send(dm_env_rpc_pb2.JoinWorldRequest(world_name=self.world_name)).specs


class TestResetWorldCompliance(_Server, compliance.ResetWorld):
    pass


class TestStepCompliance(_Server, compliance.Step):
    @property
    def required_actions(self):
        return {1: tensor_utils.pack_tensor("scroll(1)")}  # a desktop has no implicit no-op

    @pytest.fixture(autouse=True)
    def _join(self, _connect):
        self._specs = self.connection.send(
            dm_env_rpc_pb2.JoinWorldRequest(world_name=self.world_name)).specs

    @property
    def specs(self):
        return self._specs
