"""Graceful shutdown: SIGTERM/SIGINT drain in-flight work, end idle streams, stop the workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import psutil
import pytest
from fake_backend import PATH, fake_config

from env_server.client import BatchedClient
from env_server.proto import desktop_pb2 as pb
from env_server.proto import desktop_pb2_grpc as pb_grpc
from env_server.server import ServerThread

REPO = Path(__file__).resolve().parents[1]


def _start_cli(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "env_server.serve", "--port", "0", "--port_file", str(port_file),
         "--backend", "fake", "--backend_module", PATH, "--workers", "2", "--grace_s", "5", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {proc.communicate()[0]}")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text()}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_in_flight_work_then_exits(tmp_path, sig):
    proc, address = _start_cli(tmp_path)
    try:
        workers = psutil.Process(proc.pid).children(recursive=True)  # forkserver, workers, tracker
        assert len(workers) >= 3
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.DesktopEnvStub(channel)
        ids = [r.env_id for r in stub.Batch(pb.Request(create=pb.CreateRequest(count=2)), timeout=10).results]
        stub.Batch(pb.Request(reset=pb.ResetRequest(items=[pb.ResetItem(env_id=e) for e in ids])), timeout=10)
        idle = BatchedClient(address)  # an idle stream must not hold the shutdown for the grace period
        idle.create(1)
        box = {}

        def slow_step():
            req = pb.Request(step=pb.StepRequest(items=[pb.StepItem(env_id=ids[0], action="hang(1.5)")]))
            box["response"] = stub.Batch(req, timeout=20)

        t = threading.Thread(target=slow_step)
        t.start()
        time.sleep(0.4)
        t0 = time.monotonic()
        proc.send_signal(sig)
        t.join(20)
        [result] = box["response"].results
        assert result.status.code == pb.OK and result.step_index == 1  # drained, not cut
        with pytest.raises(grpc.RpcError) as err:
            idle.create(1)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert time.monotonic() - t0 < 4.5  # no waiting out the 5 s grace for the idle stream
        assert "shutting down" in out
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive
        idle.shutdown()
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_in_process_stop_ends_streams_and_workers():
    st = ServerThread(fake_config()).start()
    pids = st.run(_worker_pids(st))
    client = BatchedClient(st.address)
    ids = client.create(3)
    client.reset(ids, [1, 2, 3])
    pending = client.step_async(ids, ["hang(0.5)", "x", "x"])
    time.sleep(0.1)
    st.stop(grace=5.0)
    assert all(r.ok for r in pending.result(5))  # in-flight items finished during the drain
    with pytest.raises(grpc.RpcError):
        client.step(ids, ["x"] * 3)
    client.shutdown()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def _worker_pids(st):
    return st.server.pool.worker_pids()


def test_health_not_serving_while_draining():
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    st = ServerThread(fake_config()).start()
    channel = grpc.insecure_channel(st.address)
    stub = health_pb2_grpc.HealthStub(channel)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    stopper = threading.Thread(target=st.stop, kwargs={"grace": 1.0})
    stopper.start()
    statuses = []
    try:
        for update in watch:
            statuses.append(update.status)
    except grpc.RpcError:
        pass
    stopper.join(30)
    assert statuses[:1] == [health_pb2.HealthCheckResponse.NOT_SERVING]
    channel.close()
    assert os.getpid()


def test_bad_backend_fails_at_start_with_a_clear_error():
    with pytest.raises(RuntimeError, match="unknown backend 'nope'"):
        ServerThread(fake_config(backend="nope")).start()


def test_health_follows_the_workers():
    """NOT_SERVING once no worker is alive; SERVING again when the worker has been replaced."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    for restart in (False, True):
        with ServerThread(fake_config(workers=1, restart_workers=restart)) as st, \
                grpc.insecure_channel(st.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="desktop.v1.DesktopEnv"), timeout=30)
            assert next(watch).status == serving
            os.kill(st.server.pool.workers[0].process.pid, signal.SIGKILL)
            assert next(watch).status == not_serving
            if restart:
                assert next(watch).status == serving
            else:
                check = health_pb2.HealthCheckRequest(service="")
                assert stub.Check(check, timeout=5).status == not_serving
            watch.cancel()
