"""Two JAX processes on 127.0.0.1 (2 CPU devices each, gloo collectives) train like one 4-device process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import multihost_worker
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    out = tmp_path / "result.json"
    coordinator = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("multihost_worker.py")), "--coordinator", coordinator,
             "--num-processes", "2", "--process-id", str(i), "--out", str(out)],
            env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        pytest.fail("multi-host workers timed out")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    for p, log in zip(procs, logs, strict=False):
        assert p.returncode == 0, log[-4000:]
    result = json.loads(out.read_text())
    assert result["devices"] == 4

    reference = multihost_worker.run_training(jax.devices()[:4])
    assert len(result["losses"]) == multihost_worker.STEPS
    assert reference[2] < reference[0] and reference[3] < reference[1]  # two batches, alternating
    np.testing.assert_allclose(result["losses"], reference, rtol=1e-5)
