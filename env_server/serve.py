"""Command line: ``python -m env_server.serve --port 50051 --backend sim --workers 2``.

Binds 127.0.0.1 unless ``--host`` says otherwise; any other address requires a token. SIGTERM or
SIGINT drains in-flight work for ``--grace_s`` seconds, then stops the workers and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from absl import app, flags

from env_server.auth import InsecureBindError, load_token
from env_server.server import DesktopServer, MiB, ServerConfig

FLAGS = flags.FLAGS
flags.DEFINE_string("host", "127.0.0.1", "Address to bind. Non-loopback addresses require a token.")
flags.DEFINE_integer("port", 50051, "Port to bind (0 = any free port; see --port_file).")
flags.DEFINE_string("port_file", None, "Write the bound port here once serving (atomic rename).")
flags.DEFINE_string("backend", "sim", "Backend name for make_backend().")
flags.DEFINE_string("backend_kwargs", "{}", "JSON object of keyword arguments for the backend.")
flags.DEFINE_multi_string("backend_module", [], "Module (dotted name or .py path) registering a backend.")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "Worker processes holding the envs.")
flags.DEFINE_enum("start_method", "forkserver", ["forkserver", "spawn"], "Worker start method.")
flags.DEFINE_integer("max_envs", 4096, "Most envs alive at once.")
flags.DEFINE_string("token", None, "Bearer token clients must send (or --token_file / $ENV_SERVER_TOKEN).")
flags.DEFINE_string("token_file", None, "File whose first line is the token.")
flags.DEFINE_string("tls_cert", None, "PEM certificate chain for TLS.")
flags.DEFINE_string("tls_key", None, "PEM private key for TLS.")
flags.DEFINE_integer("max_message_mb", 64, "Max gRPC message size (both directions), MiB.")
flags.DEFINE_float("step_timeout_s", 60.0, "Default per-item deadline when a request sets none; "
                   "a backend call running past its item's deadline is cancelled.")
flags.DEFINE_float("hung_worker_s", 5.0, "Kill and restart a worker whose current item is this many "
                   "seconds past its deadline (a hang the worker could not cancel itself).")
flags.DEFINE_float("unary_lease_s", 600.0, "Close envs created by the unary Batch RPC after this many "
                   "seconds without an item naming them.")
flags.DEFINE_integer("max_batch_items", 65536, "Most items (or create count) in one request.")
flags.DEFINE_bool("restart_workers", True, "Restart dead workers and recreate their envs "
                  "(their running episodes are truncated).")
flags.DEFINE_float("grace_s", 10.0, "Shutdown grace period for in-flight calls, seconds.")
flags.DEFINE_float("keepalive_s", 30.0, "Keepalive ping interval, seconds.")
flags.DEFINE_float("worker_flush_ms", 2.0, "Workers send finished results at least this often.")


def config_from_flags() -> ServerConfig:
    try:
        backend_kwargs = json.loads(FLAGS.backend_kwargs)
    except json.JSONDecodeError as err:
        raise ValueError(f"--backend_kwargs is not valid JSON: {err}") from None
    if not isinstance(backend_kwargs, dict):
        raise ValueError("--backend_kwargs must be a JSON object, e.g. '{\"max_steps\": 30}'")
    return ServerConfig(
        host=FLAGS.host, port=FLAGS.port, backend=FLAGS.backend,
        backend_kwargs=backend_kwargs, backend_modules=tuple(FLAGS.backend_module),
        workers=FLAGS.workers, start_method=FLAGS.start_method, max_envs=FLAGS.max_envs,
        token=load_token(FLAGS.token, FLAGS.token_file), tls_cert=FLAGS.tls_cert,
        tls_key=FLAGS.tls_key, max_message_bytes=FLAGS.max_message_mb * MiB,
        step_timeout_s=FLAGS.step_timeout_s, hung_worker_s=FLAGS.hung_worker_s,
        unary_lease_s=FLAGS.unary_lease_s, max_batch_items=FLAGS.max_batch_items,
        restart_workers=FLAGS.restart_workers, grace_s=FLAGS.grace_s, keepalive_time_s=FLAGS.keepalive_s,
        worker_flush_s=FLAGS.worker_flush_ms / 1000)


def _write_port(path: str, port: int) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(str(port))
    tmp.replace(path)


async def serve(config: ServerConfig, port_file: str | None = None) -> None:
    server = DesktopServer(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = await server.start()
    print(f"env_server: serving {config.backend} on {server.address} "
          f"({config.workers} workers)", flush=True)
    if port_file:
        _write_port(port_file, port)
    await stop.wait()
    print(f"env_server: shutting down (grace {config.grace_s:g}s)", flush=True)
    await server.stop()


def main(argv: list[str]) -> None:
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = config_from_flags()
        asyncio.run(serve(config, FLAGS.port_file))
    except (InsecureBindError, ValueError) as err:  # bad flags: say which, no traceback
        print(f"env_server: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        print(f"env_server: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
