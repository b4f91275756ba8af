"""The gRPC server: worker pool + dm_env_rpc + batched service + health, with auth, TLS, limits.

``DesktopServer`` runs on an asyncio loop (``grpc.aio``); ``ServerThread`` runs one on a background
thread for tests and benchmarks; ``python -m env_server.serve`` is the command line.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field

import grpc
from dm_env_rpc.v1 import dm_env_rpc_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from env_server.auth import TokenAuthInterceptor, check_bind, server_credentials
from env_server.batched_service import SERVICE as BATCHED_SERVICE
from env_server.batched_service import BatchedService
from env_server.dm_env_rpc_service import DmEnvRpcService
from env_server.pool import PoolConfig, WorkerPool
from env_server.worker import WorkerSpec

log = logging.getLogger(__name__)

DM_ENV_RPC_SERVICE = "dm_env_rpc.v1.Environment"
VERSION = "0.1.0"
MiB = 1 << 20


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port
    backend: str = "sim"
    backend_kwargs: dict = field(default_factory=dict)
    backend_modules: tuple[str, ...] = ()
    workers: int = 2
    start_method: str = "forkserver"
    max_envs: int = 4096
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_message_bytes: int = 64 * MiB
    step_timeout_s: float = 60.0  # deadline of an item whose request sets no timeout_ms
    hung_worker_s: float = 5.0  # kill + restart a worker stuck this long past an item's deadline
    unary_lease_s: float = 600.0  # envs made by unary Batch are closed after this long unused
    max_batch_items: int = 65536  # most items (or create count) in one request
    restart_workers: bool = True  # restart dead workers and recreate their envs
    grace_s: float = 10.0
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    worker_flush_s: float = 0.002

    def validate(self) -> None:
        """Raise ValueError naming the first field with an impossible value."""
        positive = ("step_timeout_s", "hung_worker_s", "unary_lease_s", "keepalive_time_s",
                    "keepalive_timeout_s", "workers", "max_envs", "max_batch_items",
                    "max_message_bytes")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("grace_s", "worker_flush_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"ServerConfig.{name} must be >= 0, got {getattr(self, name)!r}")

    def grpc_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.so_reuseport", 0),
        ]


class DesktopServer:
    """Owns the worker pool and the grpc.aio server. Use on one event loop."""

    def __init__(self, config: ServerConfig):
        config.validate()
        check_bind(config.host, config.token)
        if bool(config.tls_cert) != bool(config.tls_key):
            raise ValueError("TLS needs both --tls_cert and --tls_key")
        self.config = config
        self.port: int | None = None
        self.pool: WorkerPool | None = None
        self.batched: BatchedService | None = None
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self._health_tasks: set[asyncio.Task] = set()

    @property
    def address(self) -> str:
        host = self.config.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def start(self) -> int:
        cfg = self.config
        spec = WorkerSpec(cfg.backend, dict(cfg.backend_kwargs), tuple(cfg.backend_modules),
                          cfg.worker_flush_s)
        self.pool = WorkerPool(spec, PoolConfig(
            cfg.workers, cfg.start_method, cfg.max_envs, restart_workers=cfg.restart_workers,
            item_timeout_s=cfg.step_timeout_s, hung_worker_s=cfg.hung_worker_s))
        await self.pool.start()
        interceptors = [TokenAuthInterceptor(cfg.token)] if cfg.token else []
        server = grpc.aio.server(interceptors=interceptors, options=cfg.grpc_options())
        self.batched = BatchedService(self.pool, backend=cfg.backend,
                                      max_message_bytes=cfg.max_message_bytes,
                                      step_timeout_s=cfg.step_timeout_s, version=VERSION,
                                      unary_lease_s=cfg.unary_lease_s,
                                      max_batch_items=cfg.max_batch_items)
        self.batched.action_schema = _schema_text(cfg)
        server.add_generic_rpc_handlers((self.batched.handler(),))
        dm_env_rpc_pb2_grpc.add_EnvironmentServicer_to_server(
            DmEnvRpcService(self.pool, cfg.step_timeout_s), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        bind = f"[{cfg.host}]:{cfg.port}" if ":" in cfg.host else f"{cfg.host}:{cfg.port}"
        try:
            if cfg.tls_cert:
                creds = server_credentials(cfg.tls_cert, cfg.tls_key)
                self.port = server.add_secure_port(bind, creds)
            else:
                self.port = server.add_insecure_port(bind)
        except RuntimeError as err:
            self.port = 0
            log.error("%s", err)
        if not self.port:
            await self.pool.stop(1.0)
            raise OSError(f"could not bind {bind} (address in use?)")
        await server.start()
        self._server = server
        self.batched.start_reaper()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self.pool.on_workers_changed = self._on_workers_changed
        log.info("serving %s backend on %s with %d workers", cfg.backend, self.address, cfg.workers)
        return self.port

    async def _set_health(self, status: int) -> None:
        for name in ("", BATCHED_SERVICE, DM_ENV_RPC_SERVICE):
            await self.health.set(name, status)

    def _on_workers_changed(self, live: int) -> None:
        """NOT_SERVING while no worker is alive (all dead, or being restarted), SERVING again after."""
        if self._stopping:
            return
        status = health_pb2.HealthCheckResponse.SERVING if live else health_pb2.HealthCheckResponse.NOT_SERVING
        task = asyncio.get_running_loop().create_task(self._set_health(status))
        self._health_tasks.add(task)  # keep a reference until it ran
        task.add_done_callback(self._health_tasks.discard)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting work, let in-flight calls finish (up to ``grace`` s), stop the workers."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.config.grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self.batched is not None:
            self.batched.stop_reaper()
            self.batched.begin_drain()  # idle streams end with UNAVAILABLE, busy ones finish first
        if self._server is not None:
            await self._server.stop(grace)
        if self.pool is not None:
            await self.pool.stop(timeout=5.0)
        self._stopped.set()
        log.info("server stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def _schema_text(cfg: ServerConfig) -> str:
    """The backend's action listing (built in the server process; cheap for the sim)."""
    try:
        from env_server.backend import make_backend
        from env_server.worker import import_backend_modules

        import_backend_modules(tuple(cfg.backend_modules))
        backend = make_backend(cfg.backend, **cfg.backend_kwargs)
        try:
            return backend.schema.describe()
        finally:
            backend.close()
    except Exception as err:  # informational only
        log.warning("could not describe the action schema: %s", err)
        return ""


class ServerThread:
    """A ``DesktopServer`` on its own event loop in a daemon thread (tests, benchmarks)."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.server: DesktopServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="desktop-server",
                                        daemon=True)

    def start(self, timeout: float = 60.0) -> ServerThread:
        self._thread.start()
        self.server = DesktopServer(self.config)
        try:
            self.run(self.server.start(), timeout)
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    def run(self, coro, timeout: float | None = 60.0):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return self.server.address

    def stop(self, grace: float | None = 1.0, timeout: float = 60.0) -> None:
        if self.server is not None and self._thread.is_alive():
            self.run(self.server.stop(grace), timeout)
        self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> ServerThread:
        return self.start() if self.server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
