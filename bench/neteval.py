"""NetEval harness benchmark on the real OpsEval "Wired Network" questions with a small model config.

    python bench/neteval.py [--shots=0,5 --limit=0 --model=small --compare_limit=300 --plan_only]

For every ``--shots`` value (default 0 and 5; random demonstrations, leave-one-out, fitted to the
model's limit like ``eval.neteval`` does) prints questions/s and real tokens / computed tokens
(padding overhead; goal >= 0.85) of the tree-packed scorer (every option after one shared context,
rows in up to ``--max_shapes`` length buckets), and, on the first ``--compare_limit`` questions in
the same run, the same for one row length for every row (the previous layout) and for one packet
per option (no prefix reuse), with the ratios. ``--plan_only`` prints the layout's counters (which
do not depend on the forward pass) and the FLOP model's cost without running the model.
The model is a randomly initialised preset (throughput does not depend on the weights) with a BPE
tokenizer trained on the questions. Runs on ``BENCH_CPU_DEVICES`` (default 1) CPU devices.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", int(os.environ.get("BENCH_CPU_DEVICES", "1")))

import time  # noqa: E402
from pathlib import Path  # noqa: E402

from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from eval.loglik import MAX_SHAPES, LoglikScorer, ScoreStats  # noqa: E402
from eval.mcq_data import load_mcq  # noqa: E402
from eval.neteval import EvalConfig, build_requests, choose_demos, fit_demos  # noqa: E402
from jaxrl_desktop.mesh import make_mesh  # noqa: E402
from jaxrl_desktop.model_configs import get_config  # noqa: E402
from jaxrl_desktop.models import Decoder  # noqa: E402
from jaxrl_desktop.tokenizer import Tokenizer  # noqa: E402

_DEFAULT_DATA = Path(_HERE).parents[1] / "shared" / "data" / "opseval_wired_network" / "test.json"
flags.DEFINE_string("data", os.environ.get("NETEVAL_BENCH_DATA", str(_DEFAULT_DATA)), "OpsEval test.json.")
flags.DEFINE_string("model", "small", "Model preset (random init).")
flags.DEFINE_integer("limit", 0, "Questions for the main measurement (0 = all).")
flags.DEFINE_integer("compare_limit", 300, "Questions for the layout comparisons (0 = skip).")
flags.DEFINE_list("shots", ["0", "5"], "Shot counts to measure (random demonstrations, leave-one-out).")
flags.DEFINE_integer("rows_per_batch", 8, "Packed rows per forward call.")
flags.DEFINE_integer("max_shapes", MAX_SHAPES, "Most row lengths (compiled shapes) per run.")
flags.DEFINE_bool("plan_only", False, "Only lay the rows out: token counters and modelled cost, no forward.")
FLAGS = flags.FLAGS


def _describe(stats: ScoreStats) -> str:
    lengths = "+".join(f"{n}x{length}" for length, n in sorted(stats.row_counts.items(), reverse=True))
    return (f"real/computed {stats.efficiency:.3f}  unique/computed {stats.unique_tokens / stats.computed_tokens:.3f}  "
            f"computed {stats.computed_tokens:>9,d} tokens  rows {lengths}  shapes={len(stats.shapes)} "
            f"truncated={stats.truncated}")


def run(scorer: LoglikScorer, requests, label: str) -> dict[str, float]:
    """Compile the run's shapes, then time the full scoring (layout + host packing + forward)."""
    if FLAGS.plan_only:
        t = time.perf_counter()
        stats = scorer.plan(requests)
        dt = time.perf_counter() - t
        print(f"  {label:<34} {_describe(stats)}  modelled cost {stats.modelled_cost:.3g} (layout {dt:.2f}s)")
        return {"real/computed": stats.efficiency, "computed": stats.computed_tokens, "cost": stats.modelled_cost,
                "questions/s": float("nan")}
    t = time.perf_counter()
    scorer.warmup(requests)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    _, stats = scorer.score(requests)
    dt = time.perf_counter() - t
    print(f"  {label:<34} {len(requests) / dt:8.2f} q/s  {_describe(stats)}  "
          f"(compile + layout {compile_s:.1f}s, not timed)")
    return {"questions/s": len(requests) / dt, "seconds": dt, "real/computed": stats.efficiency,
            "computed": stats.computed_tokens, "cost": stats.modelled_cost}


def main(argv) -> None:
    del argv
    items = load_mcq(FLAGS.data, "opseval")
    t = time.perf_counter()
    tok = Tokenizer.train([it.question + "\n" + "\n".join(it.options) for it in items], vocab_size=2048,
                          min_frequency=1)
    pool = items
    if FLAGS.limit:
        items = items[: FLAGS.limit]
    cfg = get_config(FLAGS.model, vocab_size=tok.vocab_size)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    mesh = make_mesh(data=-1, fsdp=1, tensor=1)
    scorer = LoglikScorer(model, mesh, rows_per_batch=FLAGS.rows_per_batch, max_shapes=FLAGS.max_shapes)
    print(f"{len(items)} OpsEval questions, model {FLAGS.model} ({cfg.num_layers} layers, d={cfg.hidden_size}, "
          f"vocab {cfg.vocab_size}, max_seq_len {cfg.max_seq_len}); {jax.device_count()} device(s); "
          f"setup {time.perf_counter() - t:.1f}s")
    summary = []
    for shots in [int(s) for s in FLAGS.shots]:
        ecfg = EvalConfig(shots=shots)
        demos = choose_demos(items, pool, ecfg)
        requests, _, prompts = build_requests(items, pool, demos, ecfg, tok, add_bos=False)
        fitted = demos
        if shots:
            fitted, requests, prompts = fit_demos(items, pool, demos, requests, prompts, ecfg, tok, False,
                                                  scorer.limit)
        fewer = sum(len(a) < len(b) for a, b in zip(fitted, demos, strict=True))
        print(f"{shots}-shot ({fewer} prompts lost demonstrations to fit {scorer.limit} tokens):")
        main_row = run(scorer, requests, f"tree-packed, <= {FLAGS.max_shapes} row lengths")
        if FLAGS.compare_limit:
            sub = requests[: FLAGS.compare_limit]
            print(f" comparison on the first {len(sub)} questions:")
            a = main_row if len(sub) == len(requests) else run(scorer, sub, f"tree-packed, <= {FLAGS.max_shapes} row lengths")
            one = LoglikScorer(model, mesh, rows_per_batch=FLAGS.rows_per_batch, max_shapes=1)
            b = run(one, sub, "tree-packed, one row length")
            naive = LoglikScorer(model, mesh, rows_per_batch=FLAGS.rows_per_batch, reuse_prefix=False,
                                 max_shapes=FLAGS.max_shapes)
            c = run(naive, sub, "one packet per option")
            if FLAGS.plan_only:
                print(f"  modelled cost: one row length {b['cost'] / a['cost']:.2f}x, no prefix reuse "
                      f"{c['cost'] / a['cost']:.2f}x the bucketed layout")
            else:
                print(f"  row-length buckets: {a['questions/s'] / b['questions/s']:.2f}x questions/s; prefix reuse: "
                      f"{a['questions/s'] / c['questions/s']:.2f}x questions/s, "
                      f"{c['computed'] / a['computed']:.2f}x fewer computed tokens")
        summary.append((shots, main_row))
    for shots, row in summary:
        goal = "meets" if row["real/computed"] >= 0.85 else "BELOW"
        rate = "" if FLAGS.plan_only else f"; {row['questions/s']:.2f} questions/s"
        print(f"{shots}-shot: real/computed tokens {row['real/computed']:.3f} ({goal} the 0.85 goal){rate}")


if __name__ == "__main__":
    app.run(main)
