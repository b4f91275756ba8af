"""The training job keeps training through env faults: its embedded server runs a sim backend whose
first step kills its worker process for some task seeds and hangs past the step deadline for others.
The job must finish every phase, leave the cut episodes out and say how many there were."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train_resume import ROOT, TINY, _env

BACKEND = Path(__file__).resolve().parent / "crashing_backend.py"


@pytest.mark.slow
def test_training_survives_killed_workers_and_hung_steps(tmp_path):
    faults = json.dumps({"kill_every": 19, "hang_every": 53, "hang_s": 30.0})
    cmd = [sys.executable, "-m", "jaxrl_desktop.train", f"--config.workdir={tmp_path}", *TINY,
           "--config.env.backend=faulty_sim", f"--config.env.backend_kwargs={faults}",
           f"--config.env.backend_modules={BACKEND}", "--config.env.timeout_s=3",
           "--config.entropulse.entropy_threshold=100.0"]  # the entropy trigger ends each RL phase
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    changes = [r["to"] for r in records if r.get("kind") == "phase_change"]
    assert changes == ["bc", "rl1", "entropulse1", "rl2", "done"]
    reasons = [r["reason"] for r in records if r.get("kind") == "phase_change" and r["from"].startswith("rl")]
    assert len(reasons) == 2 and all("fell below the threshold 100.0" in r for r in reasons), reasons
    rl = [r for r in records if r.get("kind") == "train" and "aborted_episodes" in r]
    evals = [r for r in records if r.get("kind") == "eval"]
    cut = sum(r["aborted_episodes"] for r in rl) + sum(r["heldout_aborted"] + r["train_aborted"] for r in evals)
    assert cut > 0, "no episode was cut: the fault injection did not fire"
    # the cut episodes are left out, not counted as failures of the policy
    assert all(r["informative_steps"] >= 0 and 0.0 <= r["rollout_success"] <= 1.0 for r in rl)
    assert "cut by env faults and are left out" in done.stderr
    assert "DEADLINE_EXCEEDED" in done.stderr or "ABORTED" in done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"bc", "rl1", "entropulse1", "rl2"} <= summary.keys()
