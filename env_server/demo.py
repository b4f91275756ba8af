"""Demo: start a local env server, let the scripted expert solve a few tasks over gRPC, print success
and timing, and write one episode as an HTML page.

    python -m env_server.demo [--tasks 16] [--style gui] [--out runs/demo]
"""

from __future__ import annotations

import time
from pathlib import Path

from absl import app, flags

flags.DEFINE_integer("tasks", 16, "Tasks to run (one per env, sampled over all families).")
flags.DEFINE_enum("style", "api", ["api", "gui"], "Expert style: API calls or GUI-only actions.")
flags.DEFINE_enum("split", "train", ["train", "heldout"], "Task split.")
flags.DEFINE_integer("workers", 2, "Env worker processes.")
flags.DEFINE_string("out", "runs/demo", "Where to write episode.html.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    from env_server.client import BatchedClient
    from env_server.episode_html import episode_html, record, write_page
    from env_server.server import ServerConfig, ServerThread
    from env_server.types import TaskRef
    from jaxrl_desktop.rollout import ExpertPolicy, run_episodes

    t0 = time.perf_counter()
    with ServerThread(ServerConfig(workers=FLAGS.workers)).start() as server, BatchedClient(server.address) as client:
        t_start = time.perf_counter() - t0
        ids = client.create(FLAGS.tasks)
        tasks = [TaskRef("", seed, FLAGS.split) for seed in range(FLAGS.tasks)]
        t1 = time.perf_counter()
        episodes = run_episodes(client, ids, tasks, ExpertPolicy(FLAGS.style), max_steps=100)
        dt = time.perf_counter() - t1
        steps = sum(len(e.steps) for e in episodes)
        print(f"server at {server.address} started in {t_start:.2f}s")
        for e in episodes:
            print(f"  {'OK  ' if e.success else 'FAIL'} {e.family:<30} {len(e.steps):>3} steps  {e.instruction[:70]}")
        solved = sum(e.success for e in episodes)
        print(f"expert ({FLAGS.style}) solved {solved}/{len(episodes)} tasks; {steps} steps in {dt:.2f}s "
              f"({steps / dt:.0f} steps/s over gRPC, lockstep)")
        longest = max(episodes, key=lambda e: len(e.steps))
        frames = record(client, ids[0], longest.task, [s.choice.text for s in longest.steps])
        page = write_page([episode_html(frames, f"{longest.family} (expert, {FLAGS.style} style)")],
                          Path(FLAGS.out) / "episode.html", "Desktop episode")
        print(f"wrote {page}")


if __name__ == "__main__":
    app.run(main)
