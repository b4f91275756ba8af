"""Worker processes: each owns many envs and executes batched commands in arrival order.

The command loop is plain blocking Python; all concurrency lives in the server, which keeps a
socket to every worker. Commands for one env are executed in the order sent, so per-env ordering
holds without locks. Replies are flushed when a command batch is done, or earlier once
``flush_s`` has passed, so results of slow envs stream out while fast ones are still batched.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from env_server.backend import Backend, make_backend
from env_server.ipc import Cmd, Fmt, Op, Reply, Shot, recv_frame, send_frame
from env_server.types import TaskRef
from env_server.wire import result_bytes, to_wire

log = logging.getLogger(__name__)

# grpc status codes (ints, so workers need not import grpc)
OK, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 0, 3, 4, 5
FAILED_PRECONDITION, ABORTED, INTERNAL = 9, 10, 13

IDLE, RUNNING, OVER, BROKEN = range(4)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs to build envs (picklable)."""

    backend: str = "sim"
    backend_kwargs: dict = field(default_factory=dict)
    backend_modules: tuple[str, ...] = ()  # modules (dotted names or .py paths) that register backends
    flush_s: float = 0.002


def import_backend_modules(modules: tuple[str, ...]) -> None:
    for mod in modules:
        if mod.endswith(".py"):
            path = Path(mod).resolve()
            name = f"_backend_plugin_{path.stem}"
            if name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(mod)


class _Env:
    __slots__ = ("backend", "episode_id", "state", "step_index")

    def __init__(self, backend: Backend, episode_id: int = 0):
        self.backend = backend
        self.episode_id = episode_id
        self.step_index = 0
        self.state = IDLE


class WorkerState:
    """The envs of one worker and the command interpreter (usable in-process too)."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        import_backend_modules(spec.backend_modules)
        self.envs: dict[int, _Env] = {}
        self._screen_shape: tuple[int, int] | bool | None = False  # False = not probed yet

    def screen_shape(self, backend: Backend) -> tuple[int, int] | None:
        shape = getattr(backend, "screen_shape", None)
        if shape is not None:
            return tuple(shape)[:2]
        if self._screen_shape is False:
            self._screen_shape = None
            try:  # probe once with a throwaway backend
                probe = make_backend(self.spec.backend, **self.spec.backend_kwargs)
                try:
                    img = probe.reset(TaskRef(), screenshot=True).screenshot
                    self._screen_shape = None if img is None else tuple(img.shape[:2])
                finally:
                    probe.close()
            except Exception:
                log.warning("could not probe the screen size of backend %r", self.spec.backend)
        return self._screen_shape

    def handle(self, cmd: Cmd) -> Reply:
        if cmd.deadline and time.monotonic() > cmd.deadline:
            return self._reply(cmd, DEADLINE_EXCEEDED, "deadline exceeded before the item started")
        op = cmd.op
        try:
            if op == Op.STEP:
                return self._step(cmd)
            if op == Op.RESET:
                return self._reset(cmd)
            if op == Op.CREATE:
                return self._create(cmd)
            if op == Op.CLOSE:
                return self._close(cmd)
            if op == Op.PING:
                return self._reply(cmd, OK, "", payload=self.stats())
        except Exception as err:  # a backend bug must not take the worker down
            log.exception("worker error on %s env %d", Op(op).name, cmd.env_id)
            env = self.envs.get(cmd.env_id)
            if env is not None and op in (Op.STEP, Op.RESET):
                env.state = BROKEN
            return self._reply(cmd, INTERNAL, f"{Op(op).name.lower()} failed: {type(err).__name__}: {err}")
        return self._reply(cmd, INVALID_ARGUMENT, f"unknown op {op}")

    def stats(self) -> dict:
        return {"envs": len(self.envs), "pid": os.getpid()}

    # ------------------------------------------------------------------ ops
    def _create(self, cmd: Cmd) -> Reply:
        if cmd.env_id in self.envs:
            return self._reply(cmd, ABORTED, f"env {cmd.env_id} already exists")
        kwargs = {**self.spec.backend_kwargs, **(cmd.arg or {})}
        backend = make_backend(self.spec.backend, **kwargs)
        env = _Env(backend)
        self.envs[cmd.env_id] = env
        return self._reply(cmd, OK, "", env, payload=self.screen_shape(backend))

    def _close(self, cmd: Cmd) -> Reply:
        env = self.envs.pop(cmd.env_id, None)
        if env is None:
            return self._reply(cmd, NOT_FOUND, f"env {cmd.env_id} does not exist")
        env.backend.close()
        return self._reply(cmd, OK, "", env)

    def _reset(self, cmd: Cmd) -> Reply:
        env = self.envs.get(cmd.env_id)
        if env is None:
            return self._reply(cmd, NOT_FOUND, f"env {cmd.env_id} does not exist")
        family, seed, split = cmd.arg
        task = TaskRef(family=family, seed=int(seed), split=split or "train")
        env.state = BROKEN
        try:
            obs = env.backend.reset(task, screenshot=cmd.shot != Shot.NONE)
        except ValueError as err:  # a bad task reference
            return self._reply(cmd, INVALID_ARGUMENT, f"reset failed: {err}", env)
        env.episode_id += 1
        env.step_index = 0
        env.state = OVER if obs.last else RUNNING
        return self._obs_reply(cmd, env, obs)

    def _step(self, cmd: Cmd) -> Reply:
        env = self.envs.get(cmd.env_id)
        if env is None:
            return self._reply(cmd, NOT_FOUND, f"env {cmd.env_id} does not exist")
        if env.state != RUNNING:
            why = {IDLE: "has no episode yet", OVER: f"finished episode {env.episode_id}",
                   BROKEN: "failed its last reset/step"}[env.state]
            return self._reply(cmd, FAILED_PRECONDITION, f"env {cmd.env_id} {why}; reset it first", env)
        obs = env.backend.step(cmd.arg, screenshot=cmd.shot != Shot.NONE)
        env.step_index += 1
        if obs.last:
            env.state = OVER
        return self._obs_reply(cmd, env, obs)

    # ------------------------------------------------------------------ replies
    def _obs_reply(self, cmd: Cmd, env: _Env, obs) -> Reply:
        wire = to_wire(obs, cmd.shot)
        if cmd.fmt == Fmt.PROTO:
            payload = result_bytes(cmd.meta, _KIND[cmd.op], cmd.env_id, env.episode_id,
                                   env.step_index, obs=wire)
        else:
            payload = wire
        return Reply(cmd.tag, OK, "", cmd.env_id, env.episode_id, env.step_index, payload, obs.last)

    def _reply(self, cmd: Cmd, code: int, message: str, env: _Env | None = None,
               payload=None) -> Reply:
        ep, st = (env.episode_id, env.step_index) if env is not None else (0, 0)
        if cmd.fmt == Fmt.PROTO and payload is None:
            payload = result_bytes(cmd.meta, _KIND[cmd.op], cmd.env_id, ep, st, code, message)
        return Reply(cmd.tag, code, message, cmd.env_id, ep, st, payload, False)

    def close_all(self) -> None:
        for env in self.envs.values():
            try:
                env.backend.close()
            except Exception:
                log.exception("error closing a backend")
        self.envs.clear()


# desktop.v1.Kind values per op (PING/SHUTDOWN have no kind)
_KIND = {Op.CREATE: 1, Op.RESET: 2, Op.STEP: 3, Op.CLOSE: 4, Op.PING: 0, Op.SHUTDOWN: 0}


def serve(sock: socket.socket, spec: WorkerSpec) -> None:
    """The worker's command loop; returns on SHUTDOWN or when the server goes away."""
    sock.setblocking(True)
    try:
        state = WorkerState(spec)
        make_backend(spec.backend, **spec.backend_kwargs).close()  # fail fast on a bad backend
    except Exception as err:
        log.exception("worker could not start")
        message = f"worker could not start: {type(err).__name__}: {err}"
        with contextlib.suppress(EOFError, OSError):  # answer the startup ping with the reason
            send_frame(sock, [Reply(c.tag, INTERNAL, message, c.env_id, 0, 0, None, False)
                              for c in recv_frame(sock)])
        sock.close()
        return
    flush_s = spec.flush_s
    try:
        while True:
            try:
                cmds = recv_frame(sock)
            except (EOFError, OSError):
                return
            out: list[Reply] = []
            last = time.monotonic()
            for cmd in cmds:
                if cmd.op == Op.SHUTDOWN:
                    state.close_all()
                    out.append(Reply(cmd.tag, OK, "", 0, 0, 0, None, False))
                    send_frame(sock, out)
                    return
                out.append(state.handle(cmd))
                now = time.monotonic()
                if now - last >= flush_s:
                    send_frame(sock, out)
                    out = []
                    last = now
            if out:
                send_frame(sock, out)
    except (BrokenPipeError, ConnectionResetError):
        return
    finally:
        state.close_all()
        sock.close()


def worker_main(sock: socket.socket, spec: WorkerSpec, index: int) -> None:
    """Process entry point (module-level so spawn/forkserver can pickle it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server owns shutdown; Ctrl-C goes to it
    logging.basicConfig(level=logging.WARNING, format=f"[worker {index}] %(levelname)s %(message)s")
    serve(sock, spec)
