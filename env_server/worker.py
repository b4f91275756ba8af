"""Worker processes: each owns many envs and executes batched commands in arrival order.

The command loop is plain blocking Python; all concurrency lives in the server, which keeps a
socket to every worker. Commands for one env are executed in the order sent, so per-env ordering
holds without locks. Replies are flushed when a command batch is done, or earlier once
``flush_s`` has passed, so results of slow envs stream out while fast ones are still batched.

Hangs: in a worker process every backend call runs under a SIGALRM timer. When the item's
deadline passes, the call is interrupted (``ItemTimeout``), answered ``DEADLINE_EXCEEDED`` with a
truncated observation, and its env must be reset. The same timer flushes replies that are ready
while a later call is still running. A call stuck where Python signal handlers cannot run (inside
C code) is not interrupted; the server's watchdog kills and replaces such a worker.
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
from env_server.wire import result_bytes, to_wire, truncated_wire

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


class ItemTimeout(BaseException):
    """Raised inside a backend call that ran past its item's deadline (BaseException so that a
    backend's own ``except Exception`` cannot swallow it)."""


class Alarm:
    """One SIGALRM timer serving two purposes while a backend call runs (main thread only).

    ``flush_at``: send the replies already finished (so a hanging call does not hold them back);
    ``cancel_at``: raise :class:`ItemTimeout` in the running call.
    """

    def __init__(self, on_flush):
        self.on_flush = on_flush
        self.flush_at = 0.0
        self.cancel_at = 0.0
        self.armed = False
        signal.signal(signal.SIGALRM, self._fire)

    @contextlib.contextmanager
    def guard(self, cancel_at: float, flush_at: float):
        self.cancel_at, self.flush_at, self.armed = cancel_at, flush_at, True
        self._schedule()
        try:
            yield
        finally:
            self.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _schedule(self) -> None:
        times = [t for t in (self.cancel_at, self.flush_at) if t]
        if times:
            signal.setitimer(signal.ITIMER_REAL, max(min(times) - time.monotonic(), 1e-4))

    def _fire(self, signum, frame) -> None:
        if not self.armed:
            return
        now = time.monotonic()
        if self.flush_at and now >= self.flush_at:
            self.flush_at = 0.0
            self.on_flush()
        if self.cancel_at and now >= self.cancel_at:
            self.armed = False
            raise ItemTimeout
        self._schedule()


class _Env:
    __slots__ = ("backend", "episode_id", "state", "step_index", "why")

    def __init__(self, backend: Backend, episode_id: int = 0):
        self.backend = backend
        self.episode_id = episode_id
        self.step_index = 0
        self.state = OVER if episode_id else IDLE  # a recreated env continues its episode count
        self.why = ""


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

    def handle(self, cmd: Cmd, alarm: Alarm | None = None, flush_at: float = 0.0) -> Reply:
        """Run one command. With an ``alarm``, a call past ``cmd.deadline`` is cancelled."""
        start = time.monotonic()
        if cmd.deadline and start > cmd.deadline:
            return self._reply(cmd, DEADLINE_EXCEEDED, "deadline exceeded before the item started "
                               "(it was queued behind other work); the env is unchanged")
        if alarm is None or not cmd.deadline:
            return self._run(cmd)
        try:
            with alarm.guard(cmd.deadline, flush_at):
                return self._run(cmd)
        except ItemTimeout:
            return self._cancelled(cmd, time.monotonic() - start)

    def _cancelled(self, cmd: Cmd, elapsed: float) -> Reply:
        what = f"{Op(cmd.op).name.lower()} of env {cmd.env_id}"
        env = self.envs.get(cmd.env_id)
        if cmd.op == Op.CREATE:
            if env is not None:
                self.envs.pop(cmd.env_id)
                with contextlib.suppress(Exception):
                    env.backend.close()
            return self._reply(cmd, DEADLINE_EXCEEDED,
                               f"{what} ran past its deadline and was cancelled after {elapsed:.2f}s")
        if env is None or cmd.op not in (Op.STEP, Op.RESET):
            return self._reply(cmd, DEADLINE_EXCEEDED,
                               f"{what} ran past its deadline and was cancelled after {elapsed:.2f}s")
        env.state = BROKEN
        env.why = f"had its {Op(cmd.op).name.lower()} cancelled at the deadline"
        message = (f"{what} ran past its deadline and was cancelled after {elapsed:.2f}s; "
                   f"episode {env.episode_id} is truncated, reset the env to continue")
        return self._reply(cmd, DEADLINE_EXCEEDED, message, env,
                           obs=truncated_wire(message, "deadline"))

    def _run(self, cmd: Cmd) -> Reply:
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
                env.why = f"failed its last {Op(op).name.lower()}"
            return self._reply(cmd, INTERNAL, f"{Op(op).name.lower()} failed: {type(err).__name__}: {err}")
        return self._reply(cmd, INVALID_ARGUMENT, f"unknown op {op}")

    def stats(self) -> dict:
        return {"envs": len(self.envs), "pid": os.getpid()}

    # ------------------------------------------------------------------ ops
    def _create(self, cmd: Cmd) -> Reply:
        if cmd.env_id in self.envs:
            return self._reply(cmd, ABORTED, f"env {cmd.env_id} already exists")
        # arg: backend kwargs, or (kwargs, episode id to continue from) when the pool recreates it
        extra, first_episode = cmd.arg if isinstance(cmd.arg, tuple) else (cmd.arg, 0)
        kwargs = {**self.spec.backend_kwargs, **(extra or {})}
        backend = make_backend(self.spec.backend, **kwargs)
        env = _Env(backend, int(first_episode))
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
        env.why = "failed its last reset"
        try:
            obs = env.backend.reset(task, screenshot=cmd.shot != Shot.NONE)
        except (ValueError, KeyError, OverflowError) as err:  # a bad task reference
            return self._reply(cmd, INVALID_ARGUMENT,
                               f"reset failed for task (family={family!r}, seed={seed}, "
                               f"split={split!r}): {type(err).__name__}: {err}", env)
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
                   BROKEN: env.why or "failed its last reset/step"}[env.state]
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
               payload=None, obs=None) -> Reply:
        """An error/status reply; with ``obs`` (a truncated observation) it also ends the episode."""
        ep, st = (env.episode_id, env.step_index) if env is not None else (0, 0)
        if cmd.fmt == Fmt.PROTO and payload is None:
            payload = result_bytes(cmd.meta, _KIND[cmd.op], cmd.env_id, ep, st, code, message, obs)
        elif obs is not None:
            payload = obs
        return Reply(cmd.tag, code, message, cmd.env_id, ep, st, payload, obs is not None)

    def close_all(self) -> None:
        for env in self.envs.values():
            try:
                env.backend.close()
            except Exception:
                log.exception("error closing a backend")
        self.envs.clear()


# desktop.v1.Kind values per op (PING/SHUTDOWN have no kind)
_KIND = {Op.CREATE: 1, Op.RESET: 2, Op.STEP: 3, Op.CLOSE: 4, Op.PING: 0, Op.SHUTDOWN: 0}
# ops the server re-runs after a worker death: replies before them are sent first, so that when a
# worker dies the oldest item it had not answered is the one it was running
_FLUSH_FIRST = (Op.CREATE, Op.RESET)


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
    out = _Outbox(sock, spec.flush_s)
    alarm = Alarm(out.flush_from_alarm)
    try:
        while True:
            try:
                cmds = recv_frame(sock)
            except (EOFError, OSError):
                return
            out.last = time.monotonic()
            for cmd in cmds:
                if cmd.op == Op.SHUTDOWN:
                    state.close_all()
                    out.items.append(Reply(cmd.tag, OK, "", 0, 0, 0, None, False))
                    out.flush()
                    return
                if cmd.op in _FLUSH_FIRST and out.items:
                    out.flush()  # so a crash in this call is pinned on it (see WorkerPool._salvage)
                reply = state.handle(cmd, alarm, out.due())  # may flush out.items meanwhile
                out.items.append(reply)
                if out.broken:
                    return
                if time.monotonic() >= out.last + out.flush_s:
                    out.flush()
            out.flush()
    except (BrokenPipeError, ConnectionResetError):
        return
    finally:
        state.close_all()
        sock.close()


class _Outbox:
    """Finished replies waiting to be sent as one frame."""

    def __init__(self, sock: socket.socket, flush_s: float):
        self.sock = sock
        self.flush_s = flush_s
        self.items: list[Reply] = []
        self.last = time.monotonic()
        self.broken = False

    def due(self) -> float:
        """When the waiting replies should leave even if the current call is still running."""
        return self.last + self.flush_s if self.items else 0.0

    def flush(self) -> None:
        if self.items:
            items, self.items = self.items, []
            send_frame(self.sock, items)
        self.last = time.monotonic()

    def flush_from_alarm(self) -> None:
        try:
            self.flush()
        except OSError:  # the server is gone; the command loop ends after the current call
            self.broken = True


def worker_main(sock: socket.socket, spec: WorkerSpec, index: int) -> None:
    """Process entry point (module-level so spawn/forkserver can pickle it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server owns shutdown; Ctrl-C goes to it
    logging.basicConfig(level=logging.WARNING, format=f"[worker {index}] %(levelname)s %(message)s")
    serve(sock, spec)
