"""NetEval harness benchmark on the real OpsEval "Wired Network" questions with a small model config.

    python bench/neteval.py [--limit=0 --shots=0 --model=small --compare_limit=300]

Prints questions/s and real tokens / computed tokens (padding overhead; goal >= 0.85) for the
tree-packed scorer (every option after one shared context), and, on the first ``--compare_limit``
questions in the same run, the same for one packet per option (no prefix reuse), with the ratio.
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

from eval.loglik import LoglikScorer  # noqa: E402
from eval.mcq_data import load_mcq  # noqa: E402
from eval.neteval import EvalConfig, build_requests, choose_demos  # noqa: E402
from jaxrl_desktop.mesh import make_mesh  # noqa: E402
from jaxrl_desktop.model_configs import get_config  # noqa: E402
from jaxrl_desktop.models import Decoder  # noqa: E402
from jaxrl_desktop.tokenizer import Tokenizer  # noqa: E402

_DEFAULT_DATA = Path(_HERE).parents[1] / "shared" / "data" / "opseval_wired_network" / "test.json"
flags.DEFINE_string("data", os.environ.get("NETEVAL_BENCH_DATA", str(_DEFAULT_DATA)), "OpsEval test.json.")
flags.DEFINE_string("model", "small", "Model preset (random init).")
flags.DEFINE_integer("limit", 0, "Questions for the main measurement (0 = all).")
flags.DEFINE_integer("compare_limit", 300, "Questions for the with/without prefix reuse comparison (0 = skip).")
flags.DEFINE_integer("shots", 0, "Random demonstrations per prompt (leave-one-out from the data).")
flags.DEFINE_integer("rows_per_batch", 8, "Packed rows per forward call.")
FLAGS = flags.FLAGS


def run(scorer: LoglikScorer, requests, label: str) -> dict[str, float]:
    """Compile the run's one shape, then time the full scoring (layout + host packing + forward)."""
    t = time.perf_counter()
    scorer.warmup(requests)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    _, stats = scorer.score(requests)
    dt = time.perf_counter() - t
    row = {
        "questions/s": len(requests) / dt, "seconds": dt, "real/computed": stats.efficiency,
        "unique/computed": stats.unique_tokens / stats.computed_tokens, "computed": stats.computed_tokens,
        "L": stats.row_length, "rows": stats.rows, "shapes": len(stats.shapes),
    }
    print(
        f"  {label:<28} {row['questions/s']:8.2f} q/s  real/computed {row['real/computed']:.3f}  "
        f"unique/computed {row['unique/computed']:.3f}  computed {stats.computed_tokens:>9,d} tokens  "
        f"L={stats.row_length} rows={stats.rows} shapes={len(stats.shapes)} truncated={stats.truncated} "
        f"(compile {compile_s:.1f}s, not timed)"
    )
    return row


def main(argv) -> None:
    del argv
    items = load_mcq(FLAGS.data, "opseval")
    if FLAGS.limit:
        items = items[: FLAGS.limit]
    t = time.perf_counter()
    tok = Tokenizer.train([it.question + "\n" + "\n".join(it.options) for it in items], vocab_size=2048,
                          min_frequency=1)
    cfg = get_config(FLAGS.model, vocab_size=tok.vocab_size)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    mesh = make_mesh(data=-1, fsdp=1, tensor=1)
    ecfg = EvalConfig(shots=FLAGS.shots)
    demos = choose_demos(items, items, ecfg)
    requests, _, _ = build_requests(items, items, demos, ecfg, tok, add_bos=False)
    prep = time.perf_counter() - t
    print(f"{len(items)} OpsEval questions, {FLAGS.shots}-shot, model {FLAGS.model} ({cfg.num_layers} layers, "
          f"d={cfg.hidden_size}, vocab {cfg.vocab_size}, max_seq_len {cfg.max_seq_len}); "
          f"{jax.device_count()} device(s); setup (tokenizer, model init, prompts) {prep:.1f}s")
    reuse = LoglikScorer(model, mesh, rows_per_batch=FLAGS.rows_per_batch, reuse_prefix=True)
    main_row = run(reuse, requests, "tree-packed (prefix reuse)")
    if FLAGS.compare_limit:
        sub = requests[: FLAGS.compare_limit]
        print(f"comparison on the first {len(sub)} questions:")
        a = run(reuse, sub, "tree-packed (prefix reuse)")
        naive = LoglikScorer(model, mesh, rows_per_batch=FLAGS.rows_per_batch, reuse_prefix=False)
        b = run(naive, sub, "one packet per option")
        print(f"  prefix reuse: {a['questions/s'] / b['questions/s']:.2f}x questions/s, "
              f"{b['computed'] / a['computed']:.2f}x fewer computed tokens")
    goal = "meets" if main_row["real/computed"] >= 0.85 else "BELOW"
    print(f"real/computed tokens {main_row['real/computed']:.3f} ({goal} the 0.85 goal); "
          f"{main_row['questions/s']:.2f} questions/s")


if __name__ == "__main__":
    app.run(main)
