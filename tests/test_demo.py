"""The env-server demo: a local server, the expert over gRPC, an HTML page of one episode."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_solves_tasks_and_writes_the_episode_page(tmp_path):
    run = subprocess.run([sys.executable, "-m", "env_server.demo", "--tasks=4", "--style=gui", "--workers=1",
                          f"--out={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "expert (gui) solved 4/4 tasks" in run.stdout
    page = (tmp_path / "episode.html").read_text()
    steps = len(re.findall(r"<h3>step \d+</h3>", page))
    # every step shows its screenshot and its accessibility rows
    assert steps >= 2 and page.count('<img src="data:image/png;base64,') >= steps
    assert page.count("<pre>") >= steps and "button" in page
