"""Ranking-cascade benchmark: encoder throughput, sharded MIPS queries/s, approx-vs-exact recall@10.

    python bench/ranking.py [--index_rows=100000 --queries=1024 --docs=512]

Runs on a simulated ``BENCH_CPU_DEVICES`` (default 8) device CPU mesh.
"""

from __future__ import annotations

import os
import sys

# This file is bench/ranking.py: keep its folder off sys.path so `import ranking` finds the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", int(os.environ.get("BENCH_CPU_DEVICES", "8")))

import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from jaxrl_desktop.mesh import make_mesh  # noqa: E402
from ranking.matching import DenseIndex  # noqa: E402

flags.DEFINE_integer("index_rows", 100_000, "Rows of the random search index.")
flags.DEFINE_integer("dim", 384, "Embedding dimension of the random index.")
flags.DEFINE_integer("queries", 1024, "Search queries per timed run.")
flags.DEFINE_integer("k", 10, "Top-k for search and recall.")
flags.DEFINE_float("recall_target", 0.95, "approx_max_k recall target.")
flags.DEFINE_integer("docs", 512, "Documents for the encoder throughput run.")
flags.DEFINE_integer("batch_size", 64, "Encoder batch size.")
flags.DEFINE_bool("skip_encoder", False, "Skip the encoder throughput run.")
FLAGS = flags.FLAGS

_WORDS = [
    *("router", "gateway", "port", "file", "folder", "rename", "spreadsheet", "cell", "value"),
    *("window", "click", "open", "close", "protocol", "routing", "network", "address", "server"),
    *("client", "default", "settings", "menu", "button", "text", "the", "a", "of", "to"),
]


def _timeit(fn, repeats: int = 3) -> float:
    fn()  # warm-up / compile
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_encoder(n_docs: int, batch_size: int) -> dict[str, dict[str, float]]:
    """Docs/s of ``SentenceEncoder.encode`` on short (5-20 words) and long (20-150 words) texts."""
    from jaxrl_desktop.encoder import SentenceEncoder

    rng = np.random.default_rng(0)
    enc = SentenceEncoder.from_pretrained(batch_size=batch_size)
    out = {}
    for name, lo, hi, n in (("short", 5, 20, n_docs), ("long", 20, 150, max(n_docs // 2, 1))):
        docs = [" ".join(rng.choice(_WORDS, rng.integers(lo, hi))) for _ in range(n)]
        tokens = float(np.mean([len(t) for t in enc.tokenize(docs)]))
        secs = _timeit(lambda docs=docs: enc.encode(docs), repeats=1)
        out[name] = {"docs": n, "mean_tokens": tokens, "docs_per_s": n / secs, "secs": secs}
    return out


def bench_search(
    rows: int, dim: int, n_queries: int, k: int, recall_target: float
) -> dict[str, float]:
    """Queries/s of sharded approx and exact MIPS; recall@k of approx against exact."""
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((rows, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = DenseIndex(emb, mesh=make_mesh(data=1, fsdp=-1, tensor=1))
    out: dict[str, float] = {"shards": index.shards}
    results = {}
    for name, exact in (("approx", False), ("exact", True)):

        def run(exact=exact, name=name):
            results[name] = index.search(queries, k, recall_target=recall_target, exact=exact)

        out[f"{name}_queries_per_s"] = n_queries / _timeit(run)
    a, e = results["approx"].indices, results["exact"].indices
    out[f"recall@{k}"] = float(np.mean([len(set(a[i]) & set(e[i])) / k for i in range(n_queries)]))
    sub = slice(0, min(64, n_queries))  # the exact path itself against NumPy float64
    ref = np.argsort(-(queries[sub].astype(np.float64) @ emb.T.astype(np.float64)), axis=1)[:, :k]
    out[f"exact_vs_numpy_recall@{k}"] = float(
        np.mean([len(set(e[i]) & set(ref[i])) / k for i in range(len(ref))])
    )
    return out


def bench_ranker_step() -> dict[str, float] | None:
    """Placeholder: ranker training step time (to be added with the ranker)."""
    return None


def main(argv) -> None:
    del argv
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}")
    if not FLAGS.skip_encoder:
        for name, r in bench_encoder(FLAGS.docs, FLAGS.batch_size).items():
            print(
                f"encoder ({name}, mean {r['mean_tokens']:.0f} tokens): {r['docs_per_s']:.1f} docs/s "
                f"({r['docs']} docs in {r['secs']:.2f}s)"
            )
    r = bench_search(FLAGS.index_rows, FLAGS.dim, FLAGS.queries, FLAGS.k, FLAGS.recall_target)
    print(
        f"search {FLAGS.index_rows}x{FLAGS.dim} on {r['shards']} shards, k={FLAGS.k}: "
        f"approx {r['approx_queries_per_s']:.0f} q/s, exact {r['exact_queries_per_s']:.0f} q/s, "
        f"recall@{FLAGS.k} approx vs exact {r[f'recall@{FLAGS.k}']:.4f}, "
        f"exact vs numpy {r[f'exact_vs_numpy_recall@{FLAGS.k}']:.4f}"
    )
    # --- ranker training step (to be added) ---------------------------------------------------
    r = bench_ranker_step()
    if r is not None:
        print(f"ranker step: {r}")


if __name__ == "__main__":
    app.run(main)
