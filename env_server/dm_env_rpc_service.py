"""dm_env_rpc v1 ``Environment.Process``: one world = one env, drivable by the stock client.

Create settings (all optional tensors): ``family`` (string), ``seed`` (int; episode ``k`` of the
world uses ``seed + k``), ``split`` (string, default ``train``). ``Reset`` and ``ResetWorld`` accept
the same settings to change the task of later episodes. The first ``Step`` after join/reset or
after an episode end starts a new sequence (its actions are ignored) and reports ``RUNNING``;
a terminated episode reports ``TERMINATED`` (discount 0), a truncated one ``INTERRUPTED``
(discount 1). Worlds created on a stream are destroyed when that stream ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import numpy as np
from dm_env_rpc.v1 import dm_env_rpc_pb2 as rpc
from dm_env_rpc.v1 import dm_env_rpc_pb2_grpc as rpc_grpc
from dm_env_rpc.v1 import tensor_spec_utils, tensor_utils
from google.rpc import status_pb2

from env_server.ipc import Fmt, Op, Reply, Shot, WireObs
from env_server.pool import WorkerPool
from env_server.wire import unpack_screenshot

RUNNING, TERMINATED, INTERRUPTED = rpc.RUNNING, rpc.TERMINATED, rpc.INTERRUPTED
ACTION_UID = 1
OBS_UIDS = {"instruction": 1, "a11y": 2, "screenshot": 3, "reward": 4, "discount": 5, "error": 6,
            "task_id": 7}
_SETTINGS = {"family": str, "seed": int, "split": str}


class RpcError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _scalar_spec(name: str, dtype: int, bounds: tuple[float, float] | None = None) -> rpc.TensorSpec:
    spec = rpc.TensorSpec(name=name, dtype=dtype)
    if bounds is not None:
        tensor_spec_utils.set_bounds(spec, *bounds)
    return spec


def make_specs(screen_shape: tuple[int, int] | None) -> rpc.ActionObservationSpecs:
    specs = rpc.ActionObservationSpecs()
    specs.actions[ACTION_UID].CopyFrom(rpc.TensorSpec(name="action", dtype=rpc.STRING))
    obs = specs.observations
    for name in ("instruction", "a11y", "error", "task_id"):
        obs[OBS_UIDS[name]].CopyFrom(rpc.TensorSpec(name=name, dtype=rpc.STRING))
    if screen_shape is not None:
        shot = rpc.TensorSpec(name="screenshot", dtype=rpc.UINT8, shape=[*screen_shape, 3])
        tensor_spec_utils.set_bounds(shot, 0, 255)
        obs[OBS_UIDS["screenshot"]].CopyFrom(shot)
    obs[OBS_UIDS["reward"]].CopyFrom(_scalar_spec("reward", rpc.FLOAT))
    obs[OBS_UIDS["discount"]].CopyFrom(_scalar_spec("discount", rpc.FLOAT, (0.0, 1.0)))
    return specs


def parse_settings(settings, allowed=_SETTINGS) -> dict:
    out = {}
    for key, tensor in settings.items():
        if key not in allowed:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"unknown setting {key!r}; supported: {', '.join(allowed)}")
        value = tensor_utils.unpack_tensor(tensor)
        if isinstance(value, np.ndarray):
            if value.size != 1:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"setting {key!r} must be a scalar")
            value = value.reshape(()).item()
        if isinstance(value, bytes):
            value = value.decode()
        try:
            out[key] = allowed[key](value)
        except (TypeError, ValueError):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"setting {key!r} must be a {allowed[key].__name__}") from None
    return out


@dataclass
class World:
    name: str
    env_id: int
    task: dict = field(default_factory=lambda: {"family": "", "seed": 0, "split": "train"})
    screen_shape: tuple[int, int] | None = None
    episodes: int = 0  # episodes started so far
    running: bool = False
    joined_by: object | None = None


class DmEnvRpcService(rpc_grpc.EnvironmentServicer):
    """The dm_env_rpc ``Environment`` servicer over the worker pool."""

    def __init__(self, pool: WorkerPool, step_timeout_s: float = 60.0):
        self.pool = pool
        self.step_timeout_s = step_timeout_s
        self.worlds: dict[str, World] = {}

    async def Process(self, requests: AsyncIterator[rpc.EnvironmentRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[rpc.EnvironmentResponse]:
        session = _Session()
        try:
            async for request in requests:
                which = request.WhichOneof("payload")
                try:
                    handler = getattr(self, f"_{which}", None) if which else None
                    if handler is None:
                        raise RpcError(grpc.StatusCode.UNIMPLEMENTED, f"unsupported request {which!r}")
                    payload = await handler(getattr(request, which), session, context)
                    response = rpc.EnvironmentResponse(**{which: payload})
                except RpcError as err:
                    response = rpc.EnvironmentResponse(
                        error=status_pb2.Status(code=err.code.value[0], message=err.message))
                yield response
        finally:
            await self._cleanup(session)

    # ------------------------------------------------------------------ helpers
    def _timeout(self, context) -> float:
        remaining = context.time_remaining()
        return self.step_timeout_s if remaining is None else min(self.step_timeout_s, remaining)

    async def _call(self, context, op: int, env_id: int, arg=None, shot: int = Shot.NONE) -> Reply:
        reply = await self.pool.call(op, env_id, arg, shot=shot, fmt=Fmt.TUPLE,
                                     timeout=self._timeout(context))
        if reply.code == _ABORTED and isinstance(reply.payload, WireObs):
            return reply  # the server truncated the episode (worker lost): an INTERRUPTED step
        if reply.code != 0:
            raise RpcError(_CODES.get(reply.code, grpc.StatusCode.INTERNAL), reply.message)
        return reply

    def _world(self, name: str) -> World:
        world = self.worlds.get(name)
        if world is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"no world named {name!r}")
        return world

    def _joined(self, session: _Session) -> World:
        if session.world is None:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, "join a world first")
        return session.world

    async def _cleanup(self, session: _Session) -> None:
        if session.world is not None:
            session.world.joined_by = None
            session.world = None
        for name in list(session.created):
            world = self.worlds.get(name)
            if world is not None and world.joined_by is None:
                del self.worlds[name]
                self.pool.submit([(Op.CLOSE, world.env_id, None, (0, 0))], lambda _p: None)

    # ------------------------------------------------------------------ requests
    async def _create_world(self, req: rpc.CreateWorldRequest, session, context):
        task = {"family": "", "seed": 0, "split": "train"} | parse_settings(req.settings)
        ids = self.pool.allocate(1)
        if not ids:
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"the server's env limit ({self.pool.config.max_envs}) is reached")
        reply = await self._call(context, Op.CREATE, ids[0])
        name = f"desktop-{ids[0]}"
        shape = tuple(reply.payload) if reply.payload else None
        self.worlds[name] = World(name, ids[0], task, shape)
        session.created.add(name)
        return rpc.CreateWorldResponse(world_name=name)

    async def _join_world(self, req: rpc.JoinWorldRequest, session, context):
        if session.world is not None:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"already joined {session.world.name!r}; leave it first")
        world = self._world(req.world_name)
        if world.joined_by is not None:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"world {world.name!r} is joined already")
        if req.settings:
            world.task |= parse_settings(req.settings)
        world.joined_by = session
        world.running = False
        session.world = world
        session.specs = make_specs(world.screen_shape)
        return rpc.JoinWorldResponse(specs=session.specs)

    async def _leave_world(self, req, session, context):
        if session.world is not None:
            session.world.joined_by = None
            session.world.running = False
            session.world = None
        return rpc.LeaveWorldResponse()

    async def _destroy_world(self, req: rpc.DestroyWorldRequest, session, context):
        world = self._world(req.world_name)
        if world.joined_by is not None:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"world {world.name!r} is joined; leave it before destroying it")
        del self.worlds[world.name]
        session.created.discard(world.name)
        await self._call(context, Op.CLOSE, world.env_id)
        return rpc.DestroyWorldResponse()

    async def _reset(self, req: rpc.ResetRequest, session, context):
        world = self._joined(session)
        world.task |= parse_settings(req.settings)
        world.running = False
        return rpc.ResetResponse(specs=session.specs)

    async def _reset_world(self, req: rpc.ResetWorldRequest, session, context):
        world = self._world(req.world_name)
        if world.joined_by not in (None, session):
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"world {world.name!r} is joined by another client")
        world.task |= parse_settings(req.settings)
        world.running = False
        return rpc.ResetWorldResponse()

    async def _step(self, req: rpc.StepRequest, session, context):
        world = self._joined(session)
        requested = set(req.requested_observations)
        unknown = requested - set(session.specs.observations)
        if unknown:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown observation uids {sorted(unknown)}")
        shot = Shot.RAW if OBS_UIDS["screenshot"] in requested else Shot.NONE
        if not world.running:  # start a new sequence; actions are ignored
            t = world.task
            arg = (t["family"], t["seed"] + world.episodes, t["split"])
            reply = await self._call(context, Op.RESET, world.env_id, arg, shot)
            world.episodes += 1
        else:
            unknown = set(req.actions) - {ACTION_UID}
            if unknown:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown action uids {sorted(unknown)}")
            if ACTION_UID not in req.actions:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "missing the 'action' string")
            reply = await self._call(context, Op.STEP, world.env_id,
                                     _action_text(req.actions[ACTION_UID]), shot)
        obs: WireObs = reply.payload
        state = RUNNING
        if obs.terminated:
            state = TERMINATED
        elif obs.truncated:
            state = INTERRUPTED
        world.running = state == RUNNING
        return rpc.StepResponse(state=state, observations=_observations(obs, state, requested,
                                                                          world.screen_shape))


def _action_text(tensor: rpc.Tensor) -> str:
    """The action string of a scalar string tensor (anything else is an INVALID_ARGUMENT)."""
    if tensor.WhichOneof("payload") != "strings":
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "the 'action' tensor must hold a string")
    if list(tensor.shape) or len(tensor.strings.array) != 1:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"the 'action' tensor must be a scalar string, got shape {list(tensor.shape)} "
                       f"with {len(tensor.strings.array)} values")
    return tensor.strings.array[0]


def _observations(obs: WireObs, state: int, requested: set[int],
                  screen_shape: tuple[int, int] | None = None) -> dict[int, rpc.Tensor]:
    values = {
        "instruction": obs.instruction,
        "a11y": obs.a11y,
        "error": obs.error,
        "task_id": obs.task_id,
        "reward": np.float32(obs.reward),
        "discount": np.float32(0.0 if state == TERMINATED else 1.0),
    }
    out = {}
    for name, uid in OBS_UIDS.items():
        if uid not in requested:
            continue
        if name == "screenshot":
            image = unpack_screenshot(obs.screenshot)
            if image is None:  # a truncated episode has no screen: a black frame of the spec's shape
                image = np.zeros((*(screen_shape or (1, 1)), 3), np.uint8)
            out[uid] = tensor_utils.pack_tensor(image)
        else:
            out[uid] = tensor_utils.pack_tensor(values[name])
    return out


class _Session:
    def __init__(self):
        self.world: World | None = None
        self.specs: rpc.ActionObservationSpecs | None = None
        self.created: set[str] = set()


_CODES = {c.value[0]: c for c in grpc.StatusCode}
_ABORTED = grpc.StatusCode.ABORTED.value[0]

