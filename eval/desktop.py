"""Desktop task-suite evaluation: a trained policy, the random policy and the scripted expert on the
same tasks (every family of a split, several seeds each), over the env server.

    python -m eval.desktop --checkpoint runs/desktop_small --split heldout --seeds 4

Reports success per app and per family, invalid-action rate and steps per success; writes
``results.json``, ``results.md`` and an HTML gallery of a few episodes to ``--out``.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

flags.DEFINE_string("checkpoint", "", "Training workdir of the policy (empty: baselines only).")
flags.DEFINE_enum("split", "heldout", ["train", "heldout", "novel"], "Task split (novel: train families on invented values).")
flags.DEFINE_string("families", None, "Comma-separated families or apps (default: those the checkpoint was "
                    "trained on, or every family of the split without a checkpoint; \"\" = all).")
flags.DEFINE_integer("seeds", 4, "Tasks per family (different parameters each).")
flags.DEFINE_list("policies", ["model", "random", "expert"], "Policies to evaluate.")
flags.DEFINE_string("servers", "", "Comma-separated env servers (empty: start a local one).")
flags.DEFINE_enum("backend", "sim", ["sim", "x11"], "Desktop backend (of the local server; the task families "
                  "are that backend's: x11 = real apps on Xvfb, see docs/x11_backend.md).")
flags.DEFINE_integer("workers", 2, "Worker processes of the local server.")
flags.DEFINE_integer("max_steps", 0, "Policy step cap (0: the checkpoint's config, else 6).")
flags.DEFINE_bool("grammar_mask", True, "Constrain the model's actions to the action grammar.")
flags.DEFINE_integer("gallery", 4, "Episodes of the model (or first policy) in the HTML gallery.")
flags.DEFINE_string("out", "runs/eval_desktop", "Output directory.")
FLAGS = flags.FLAGS
log = logging.getLogger("eval.desktop")

EVAL_SEED = 3_000_000


def suite(split: str, seeds: int, spec: str = "", backend: str = "sim"):
    """``seeds`` tasks of every selected family of ``split`` (``spec`` as ``--config.env.families``)."""
    from env_server.types import TaskRef
    from jaxrl_desktop.trainer import select_families

    return [TaskRef(fam, EVAL_SEED + s, split) for fam in select_families(spec, split, backend)
            for s in range(seeds)]


def summarise(episodes: Sequence) -> dict:
    """Per family / per app / overall: episodes, success, invalid-action rate, steps per success (over
    the episodes no env fault cut; those are counted as ``aborted``)."""
    from env_server.tasks.registry import HELDOUT_FAMILIES, family
    from env_server.x11.tasks import HELDOUT_FAMILIES as X11_HELDOUT

    held_out = HELDOUT_FAMILIES | X11_HELDOUT

    from jaxrl_desktop.rollout import completed, invalid_rate, success_rate

    def stats(eps):
        done = completed(eps)  # env faults measure the env, not the policy
        wins = [e for e in done if e.success]
        return {"episodes": len(done), "aborted": len(eps) - len(done), "success": success_rate(done),
                "invalid_rate": invalid_rate(done),
                "steps_per_success": (sum(len(e.steps) for e in wins) / len(wins)) if wins else None}

    by_fam, by_app = defaultdict(list), defaultdict(list)
    for e in episodes:
        by_fam[e.task.family].append(e)
        by_app[family(e.task.family).apps[0]].append(e)
    return {"overall": stats(episodes),
            "by_app": {k: stats(v) for k, v in sorted(by_app.items())},
            "by_family": {k: {**stats(v), "heldout_family": k in held_out} for k, v in sorted(by_fam.items())}}


def markdown(results: dict) -> str:
    names = list(results)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label, get):
        cells = []
        for n in names:
            s = get(results[n])
            cells.append("-" if s is None else f"{s['success']:.2f} ({s['episodes']})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("**overall**", lambda r: r["overall"])
    apps = sorted({a for r in results.values() for a in r["by_app"]})
    for a in apps:
        row(f"app {a}", lambda r, a=a: r["by_app"].get(a))
    fams = sorted({f for r in results.values() for f in r["by_family"]})
    for f in fams:
        held = any(r["by_family"].get(f, {}).get("heldout_family") for r in results.values())
        row(f"{f}{' (held-out family)' if held else ''}", lambda r, f=f: r["by_family"].get(f))
    lines.append("")
    lines.append("| | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    lines.append("| invalid-action rate | " + " | ".join(f"{results[n]['overall']['invalid_rate']:.3f}" for n in names) + " |")
    sps = [results[n]["overall"]["steps_per_success"] for n in names]
    lines.append("| steps per success | " + " | ".join("-" if s is None else f"{s:.2f}" for s in sps) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    del argv
    from contextlib import ExitStack

    from env_server.client import BatchedClient
    from env_server.episode_html import episode_html, record, write_page
    from env_server.fleet import FleetClient
    from env_server.server import ServerConfig, ServerThread
    from jaxrl_desktop.rollout import ExpertPolicy, RandomPolicy, run_episodes

    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = FLAGS.families
    if spec is None and FLAGS.checkpoint and "model" in FLAGS.policies and FLAGS.backend == "sim":
        from jaxrl_desktop.policy_io import load_config

        spec = load_config(FLAGS.checkpoint).env.families
    try:
        tasks = suite(FLAGS.split, FLAGS.seeds, spec or "", FLAGS.backend)
    except ValueError as e:
        raise app.UsageError(f"--families: {e}") from None
    log.info("%d tasks over %d families of the %s split", len(tasks), len({t.family for t in tasks}), FLAGS.split)
    policies = {}
    max_steps = FLAGS.max_steps or 6
    for name in FLAGS.policies:
        if name == "model":
            if not FLAGS.checkpoint:
                log.warning("no --checkpoint: skipping the model policy")
                continue
            import jax

            from env_server.sim import SIM_SCHEMA
            from env_server.x11 import X11_SCHEMA
            from jaxrl_desktop.grammar_mask import build_action_grammar
            from jaxrl_desktop.mesh import make_mesh
            from jaxrl_desktop.policy import ModelPolicy, bucket
            from jaxrl_desktop.policy_io import load_trained_policy
            from jaxrl_desktop.sampling import SamplingConfig

            mesh = make_mesh(data=-1, fsdp=1, tensor=1)
            tp = load_trained_policy(FLAGS.checkpoint, mesh)
            tok = tp.tokenizer
            schema = X11_SCHEMA if FLAGS.backend == "x11" else SIM_SCHEMA
            grammar = (build_action_grammar(schema, tok.token_bytes(), tok.eos_id, bucket(tok.vocab_size, 128))
                       if FLAGS.grammar_mask else None)
            pol = ModelPolicy(tp.graphdef, tp.params, tp.encoder, mesh,
                              SamplingConfig(max_new_tokens=tp.encoder.cfg.max_action_tokens, greedy=True,
                                             eos_id=tok.eos_id, pad_id=tok.pad_id), grammar)
            pol.seed(jax.random.key(0))
            policies[f"model@{tp.step}({tp.phase})"] = pol
            max_steps = FLAGS.max_steps or tp.config.env.max_episode_steps
        elif name == "random":
            policies["random"] = RandomPolicy(0)
        elif name == "expert":
            policies["expert"] = ExpertPolicy("api")
        else:
            raise app.UsageError(f"unknown policy {name!r}; use model, random, expert")
    results, gallery = {}, []
    with ExitStack() as stack:
        servers = [s for s in FLAGS.servers.split(",") if s]
        if not servers:
            srv = stack.enter_context(ServerThread(ServerConfig(backend=FLAGS.backend, workers=FLAGS.workers)).start())
            servers = [srv.address]
        client = stack.enter_context(BatchedClient(servers[0]) if len(servers) == 1 else FleetClient(servers))
        ids = client.create(min(len(tasks), 128))
        from tqdm import tqdm

        for name, pol in tqdm(policies.items(), desc="policies"):
            eps = []
            for lo in range(0, len(tasks), len(ids)):
                eps += run_episodes(client, ids, tasks[lo:lo + len(ids)], pol,
                                    max_steps if name != "expert" else 100)
            results[name] = summarise(eps)
            o = results[name]["overall"]
            print(f"{name:<28} success {o['success']:.3f}  invalid {o['invalid_rate']:.3f}  "
                  f"steps/success {o['steps_per_success'] or float('nan'):.2f}  ({o['episodes']} episodes)")
            if not gallery or name.startswith("model"):
                picks = [e for e in eps if e.success][: FLAGS.gallery // 2]
                picks += [e for e in eps if not e.success][: FLAGS.gallery - len(picks)]
                gallery = [(name, e) for e in picks]
        sections = [episode_html(record(client, ids[0], e.task, [s.choice.text for s in e.steps]),
                                 f"{name}: {e.task.family} seed {e.task.seed}") for name, e in gallery]
    (out / "results.json").write_text(json.dumps({"split": FLAGS.split, "seeds": FLAGS.seeds,
                                                  "results": results}, indent=2))
    md = markdown(results)
    (out / "results.md").write_text(md)
    page = write_page(sections, out / "gallery.html", f"Desktop suite ({FLAGS.split})")
    print(md)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {page}")


if __name__ == "__main__":
    app.run(main)
