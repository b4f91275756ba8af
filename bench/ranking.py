"""Ranking-cascade benchmark: encoder throughput, sharded MIPS queries/s, approx-vs-exact recall@10,
ranker training step time.

    python bench/ranking.py [--index_rows=100000 --queries=1024 --docs=512 --ranker_batch=32]

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
flags.DEFINE_integer("ranker_batch", 32, "Candidate lists per ranker train step.")
flags.DEFINE_integer("ranker_items", 32, "Candidates per list for the ranker step.")
flags.DEFINE_integer("ranker_steps", 30, "Timed ranker train steps.")
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


def _synthetic_lists(q: int, n: int, m: int, k: int, dim: int, seed: int = 0):
    from ranking.listwise import ListwiseData

    rng = np.random.default_rng(seed)
    orders = np.stack([np.stack([rng.choice(n, k, replace=False) for _ in range(m)]) for _ in range(q)])
    emb = rng.standard_normal((q, n, dim)).astype(np.float32)
    return ListwiseData(
        query_emb=rng.standard_normal((q, dim)).astype(np.float32), item_emb=emb,
        dense=rng.random((q, n)).astype(np.float32), prerank=rng.random((q, n)).astype(np.float32),
        where=np.ones((q, n), bool), orders=orders.astype(np.int32),
        rewards=-rng.random((q, m)).astype(np.float32) * 5, list_mask=np.ones((q, m), bool),
        source=np.zeros((q, m), np.int8), item_ids=np.tile(np.arange(n), (q, 1)),
    )


def bench_ranker_step(batch_lists: int, items: int, steps: int) -> dict[str, dict[str, float]]:
    """Ranker train step (default model, ListMLE over 16 sampled 5-shot orderings per list) on the
    full device mesh and on one device: compile seconds and steady-state ms/step."""
    from ranking.ranker import RankerConfig
    from ranking.train import RankerTrainer, default_model_config, default_train_config

    data = _synthetic_lists(max(4 * batch_lists, 64), items, 16, 5, 384)
    tcfg = default_train_config()
    tcfg.batch_lists = batch_lists
    rcfg = RankerConfig(embed_dim=384, **default_model_config())
    out = {}
    for name, devices in (("mesh", jax.devices()), ("1 device", jax.devices()[:1])):
        mesh = make_mesh(data=1, fsdp=-1, tensor=1, devices=devices)
        t = time.perf_counter()
        trainer = RankerTrainer(rcfg, tcfg, mesh)
        trainer.step(trainer.sample_batch(data, 0))
        compile_s = time.perf_counter() - t
        batches = [trainer.sample_batch(data, i) for i in range(1, steps + 1)]
        t = time.perf_counter()
        for b in batches:
            metrics = trainer.step(b)
        per_step = (time.perf_counter() - t) / steps
        out[name] = {"devices": len(devices), "compile_s": compile_s, "ms_per_step": 1e3 * per_step,
                     "lists_per_s": trainer.batch_lists / per_step, "loss": metrics["loss"]}
    return out


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
    r = bench_ranker_step(FLAGS.ranker_batch, FLAGS.ranker_items, FLAGS.ranker_steps)
    for name, v in r.items():
        print(
            f"ranker train step ({name}, {v['devices']} dev, {FLAGS.ranker_batch} lists x "
            f"{FLAGS.ranker_items} items): {v['ms_per_step']:.1f} ms/step "
            f"({v['lists_per_s']:.0f} lists/s), compile+first step {v['compile_s']:.1f}s"
        )
    print(f"ranker step time ratio mesh / 1 device: {r['mesh']['ms_per_step'] / r['1 device']['ms_per_step']:.2f}")


if __name__ == "__main__":
    app.run(main)
