"""Experiment: on a task where demonstration order matters, does the trained ranker's ORDER help the LLM?

    python -m ranking.experiment_order [--n_keys=160 --llm_steps=500 --workdir=DIR]

Everything is SYNTHETIC (see :mod:`ranking.synthetic_order` for the exact setup): a tiny decoder is
trained here to behave like a recency-biased few-shot reader, the demonstration pool is generated,
and questions are split by key into train and HELD-OUT sets. The pipeline is the real cascade:
MiniLM embeddings + sharded dense search + BM25 (matching), a pre-ranker trained for topical
relevance (pre-ranking), and the list-aware ranker trained on the decoder's own
log p(gold | demonstrations in this order, question) for sampled orderings of the train questions.

On the held-out questions it prints, for k demonstrations chosen from the same candidate lists:
mean LLM log p(gold) and accuracy (argmax over the ten codes) for the RANKER's order
(:class:`ranking.cascade.PistisCascade` with the trained ranker), RANDOM ordered k-subsets, and the
PRE-RANKING order (the cascade without a ranker: best first; also shown reversed, best last), plus
reasoning & aggregating over several orderings of the pre-ranking top-k (majority vote, probability
averaging, agreement).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxrl_desktop.mesh import make_mesh
from ranking import synthetic_order as so
from ranking.aggregate import aggregate, orderings
from ranking.candidates import CandidateGenerator, Candidates, default_preranker, save_preranker
from ranking.listwise import ListwiseData
from ranking.llm_labels import LLMScorer, label_candidates
from ranking.matching import DenseIndex
from ranking.prerank import PreRanker, fit_preranker
from ranking.sparse import BM25Index


def default_config() -> ml_collections.ConfigDict:
    """Synthetic-task settings (the ``synthetic`` block of ``configs/ranker.py``)."""
    return ml_collections.ConfigDict(dict(
        seed=0, n_keys=160, heldout_fraction=0.3, reliable_per_key=2, unreliable_per_key=2,
        llm_steps=500, llm_batch=64, llm_lr=3e-3, decay=0.3, k=4, orders_per_query=24,
        n_match=16, n_prerank=8, prerank_steps=200, random_orders=8, aggregate_orders=8,
    ))


@dataclasses.dataclass
class Prepared:
    world: so.World
    llm: so.TrainedLLM
    scorer: LLMScorer
    encoder: Any
    pool_emb: np.ndarray
    preranker: PreRanker
    preranker_path: Path
    generator: CandidateGenerator
    train_data: ListwiseData
    heldout_questions: list[str]
    heldout_golds: list[str]
    seconds: dict[str, float]


def prepare(
    scfg: Any | None = None,
    mesh: Mesh | None = None,
    workdir: str | Path | None = None,
    encoder=None,
    progress: bool = True,
) -> Prepared:
    """World, trained tiny LLM, embeddings, relevance pre-ranker, and LLM-labelled train lists."""
    scfg = scfg if scfg is not None else default_config()
    mesh = mesh if mesh is not None else make_mesh(data=1, fsdp=-1, tensor=1)
    secs: dict[str, float] = {}
    t = time.perf_counter()
    world = so.make_world(scfg.n_keys, scfg.reliable_per_key, scfg.unreliable_per_key,
                          scfg.heldout_fraction, scfg.seed)
    llm = so.train_llm(mesh, steps=scfg.llm_steps, batch=scfg.llm_batch, learning_rate=scfg.llm_lr,
                       decay=scfg.decay, seed=scfg.seed, progress=progress)
    secs["llm_train"] = time.perf_counter() - t
    scorer = LLMScorer(llm.model, llm.tokenizer, mesh)

    t = time.perf_counter()
    if encoder is None:
        from jaxrl_desktop.encoder import SentenceEncoder

        encoder = SentenceEncoder.from_pretrained()
    texts = world.pool_texts
    pool_emb = encoder.encode(texts, progress=progress, desc="embed pool")
    index = DenseIndex(pool_emb, mesh=mesh)
    bm25 = BM25Index(texts)
    secs["embed"] = time.perf_counter() - t

    # Pre-ranking: trained for topical relevance (demonstration key == question key) only.
    t = time.perf_counter()
    train_q = [so.question_text(k) for k in world.train_keys]
    train_gold = [so.answer_text(world.truth[k]) for k in world.train_keys]
    wide = CandidateGenerator(index, texts, encoder, default_preranker(), bm25,
                              n_match=scfg.n_match, n_prerank=scfg.n_match)
    c0 = wide.generate(train_q)
    rel = np.array([[c0.where[i, j] and world.pool[c0.indices[i, j]].key == key
                     for j in range(c0.indices.shape[1])] for i, key in enumerate(world.train_keys)],
                   np.float32)
    pre = PreRanker(hidden=(16,), rngs=nnx.Rngs(scfg.seed))
    fit_preranker(pre, c0.features, rel, c0.where, loss="softmax", steps=scfg.prerank_steps, seed=scfg.seed)
    out = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="pistis-order-"))
    pre_path = save_preranker(pre, out / "preranker.npz")
    gen = CandidateGenerator(index, texts, encoder, pre, bm25, n_match=scfg.n_match, n_prerank=scfg.n_prerank)
    secs["prerank"] = time.perf_counter() - t

    t = time.perf_counter()
    cands = gen.generate(train_q)
    data = label_candidates(scorer, cands, texts, train_q, train_gold, k=scfg.k, m=scfg.orders_per_query,
                            prompt_fn=so.prompt_text, seed=scfg.seed, progress=progress)
    secs["llm_labels"] = time.perf_counter() - t
    held_q = [so.question_text(k) for k in world.heldout_keys]
    held_gold = [so.answer_text(world.truth[k]) for k in world.heldout_keys]
    return Prepared(world, llm, scorer, encoder, pool_emb, pre, pre_path, gen, data, held_q, held_gold, secs)


def _score_orders(
    p: Prepared, questions: Sequence[str], golds: Sequence[str], lists: Sequence[Sequence[Sequence[int]]]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean log p(gold) and accuracy per question over its ordered lists (pool indices)."""
    texts = p.world.pool_texts
    prompts, owner = [], []
    for qi, per_q in enumerate(lists):
        for order in per_q:
            prompts.append(so.prompt_text([texts[i] for i in order], questions[qi]))
            owner.append(qi)
    lp = p.scorer.option_logprobs(prompts, list(so.CODES))  # [N, 10]
    gold_idx = np.array([so.CODES.index(golds[q]) for q in owner])
    gold_lp = lp[np.arange(len(lp)), gold_idx]
    correct = (lp.argmax(1) == gold_idx).astype(np.float64)
    owner = np.asarray(owner)
    n = len(lists)
    return (np.array([gold_lp[owner == q].mean() for q in range(n)]),
            np.array([correct[owner == q].mean() for q in range(n)]))


def evaluate(p: Prepared, ranker_dir: str | Path, scfg: Any, mesh: Mesh) -> dict[str, Any]:
    """Held-out comparison of orderings (see the module docstring)."""
    from ranking.cascade import PistisCascade

    common = dict(mesh=mesh, encoder=p.encoder, n_match=scfg.n_match, n_prerank=scfg.n_prerank,
                  embeddings=p.pool_emb, preranker=p.preranker)
    ranked = PistisCascade(p.world.pool_texts, str(ranker_dir), **common)
    fallback = PistisCascade(p.world.pool_texts, None, **common)
    qs, golds, k = p.heldout_questions, p.heldout_golds, scfg.k
    ranker_lists = ranked.rank(qs, k)
    prerank_lists = fallback.rank(qs, k)
    cands: Candidates = fallback.candidates(qs)
    rng = np.random.default_rng(scfg.seed + 99)
    random_lists = []
    for i in range(len(qs)):
        pool = cands.indices[i][cands.where[i]]
        random_lists.append([[int(x) for x in rng.choice(pool, min(k, len(pool)), replace=False)]
                             for _ in range(scfg.random_orders)])
    results: dict[str, Any] = {"heldout_questions": len(qs), "k": k}
    for name, lists in (
        ("ranker", [[x] for x in ranker_lists]),
        ("random", random_lists),
        ("prerank", [[x] for x in prerank_lists]),
        ("prerank_reversed", [[x[::-1]] for x in prerank_lists]),
    ):
        lp, acc = _score_orders(p, qs, golds, lists)
        results[name] = {"logp_gold": float(lp.mean()), "accuracy": float(acc.mean())}
    # reasoning & aggregating over several orderings of the pre-ranking top-k
    votes, avgs, agree, pair = [], [], [], []
    texts = p.world.pool_texts
    for i, q in enumerate(qs):
        demos = prerank_lists[i]
        perms = orderings(rng, len(demos), scfg.aggregate_orders)
        prompts = [so.prompt_text([texts[demos[j]] for j in perm], q) for perm in perms]
        agg = aggregate(p.scorer.option_logprobs(prompts, list(so.CODES)))
        gold = so.CODES.index(golds[i])
        votes.append(agg.vote == gold)
        avgs.append(agg.average == gold)
        agree.append(agg.agreement_vote)
        pair.append(agg.pairwise)
    results["aggregate_prerank_orderings"] = {
        "orderings": int(scfg.aggregate_orders), "vote_accuracy": float(np.mean(votes)),
        "average_accuracy": float(np.mean(avgs)), "agreement": float(np.mean(agree)),
        "pairwise_agreement": float(np.mean(pair)),
    }
    return results


def run(
    scfg: Any | None = None,
    train_cfg: Any | None = None,
    model_cfg: Any | None = None,
    mesh: Mesh | None = None,
    workdir: str | Path | None = None,
    encoder=None,
    progress: bool = True,
) -> dict[str, Any]:
    """The whole experiment; returns the results dict (also written to ``workdir/results.json``)."""
    from ranking.train import default_train_config, fit_ranker

    scfg = scfg if scfg is not None else default_config()
    mesh = mesh if mesh is not None else make_mesh(data=1, fsdp=-1, tensor=1)
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="pistis-order-"))
    t0 = time.perf_counter()
    p = prepare(scfg, mesh, workdir, encoder, progress)
    t = time.perf_counter()
    fit = fit_ranker(p.train_data, train_cfg or default_train_config(), model_cfg, mesh, workdir,
                     seed=scfg.seed, progress=progress, preranker_path=p.preranker_path)
    p.seconds["ranker_train"] = time.perf_counter() - t
    t = time.perf_counter()
    results = evaluate(p, workdir, scfg, mesh)
    p.seconds["evaluate"] = time.perf_counter() - t
    p.seconds["total"] = time.perf_counter() - t0
    results["llm_final_loss"] = float(np.mean(p.llm.history[-20:]))
    results["llm_rule_fidelity"] = so.rule_fidelity(p.llm, decay=scfg.decay)
    results["ranker_loss"] = [float(np.mean([h["loss"] for h in fit.history[:10]])),
                              float(np.mean([h["loss"] for h in fit.history[-10:]]))]
    results["train_lists"] = len(p.train_data)
    results["seconds"] = {k: round(v, 1) for k, v in p.seconds.items()}
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def format_results(r: dict[str, Any]) -> str:
    lines = [f"held-out questions: {r['heldout_questions']}, k = {r['k']} demonstrations (SYNTHETIC task)"]
    for name, label in (("ranker", "ranker order"), ("random", "random order"),
                        ("prerank", "pre-ranking order (best first)"),
                        ("prerank_reversed", "pre-ranking order reversed (best last)")):
        lines.append(f"  {label:<40s} log p(gold) {r[name]['logp_gold']:7.3f}   accuracy {r[name]['accuracy']:.3f}")
    if "llm_rule_fidelity" in r:
        f = r["llm_rule_fidelity"]
        lines.insert(0, f"tiny LLM vs its training rule: KL {f['kl']:.3f}, same argmax {f['argmax_agreement']:.3f}")
    a = r["aggregate_prerank_orderings"]
    lines.append(f"  aggregate over {a['orderings']} orderings of the pre-ranking top-k: vote accuracy "
                 f"{a['vote_accuracy']:.3f}, probability-average accuracy {a['average_accuracy']:.3f}, "
                 f"agreement {a['agreement']:.3f}, pairwise agreement {a['pairwise_agreement']:.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    from absl import flags
    from absl import logging as absl_logging

    del argv
    f = flags.FLAGS
    if not f["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    scfg = default_config()
    scfg.n_keys, scfg.llm_steps, scfg.seed = f.n_keys, f.llm_steps, f.seed
    from ranking.train import default_train_config

    tcfg = default_train_config()
    tcfg.steps = f.ranker_steps
    r = run(scfg, tcfg, workdir=f.workdir)
    print(format_results(r))
    print(f"timings (s): {r['seconds']}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_integer("n_keys", 160, "Number of facts (questions); 30% are held out.")
    flags.DEFINE_integer("llm_steps", 500, "Training steps of the tiny decoder.")
    flags.DEFINE_integer("ranker_steps", 300, "Training steps of the ranker.")
    flags.DEFINE_integer("seed", 0, "Seed of the world, the LLM and the ranker.")
    flags.DEFINE_string("workdir", None, "Where to keep the ranker and results (default: a temp dir).")
    app.run(main)
