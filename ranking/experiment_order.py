"""Experiment: on a task where demonstration order matters, does the trained ranker's ORDER help the LLM?

    python -m ranking.experiment_order [--n_keys=160 --llm_steps=500 --workdir=DIR]

Everything is SYNTHETIC (see :mod:`ranking.synthetic_order` for the exact setup): a tiny decoder is
trained here to behave like a recency-biased few-shot reader, the demonstration pool is generated,
and questions are split by key into train and HELD-OUT sets. The pipeline is the real cascade:
MiniLM embeddings + sharded dense search + BM25 (matching), a pre-ranker trained for topical
relevance (pre-ranking), and the list-aware ranker trained on two label sources for the TRAIN
questions only:

* LLM labels: the decoder's own log p(gold | demonstrations in this order, question) for sampled
  orderings (:func:`ranking.llm_labels.label_candidates`, run on the mesh);
* user feedback: a simulated user is shown the LLM's answer for randomly ordered k-shot lists and
  reacts to the whole list (``copy`` if the answer is right, else ``regenerate`` or ``dislike``);
  the events are written to ``WORKDIR/feedback.jsonl`` and read back through the same JSONL path as
  real logs (:class:`ranking.feedback.FeedbackStore`, :func:`ranking.feedback.feedback_lists`).

On the held-out questions it prints, for k demonstrations chosen from the same candidate lists:
mean LLM log p(gold) and accuracy (argmax over the ten codes) for the RANKER's order
(:class:`ranking.cascade.PistisCascade` loading the saved ranker), RANDOM ordered k-subsets, the
ranker's own k demonstrations in random orders (same set, so only the order differs), and the
PRE-RANKING order (the cascade without a ranker: best first; also shown reversed, best last), with
per-question win/tie/loss counts of the ranker against each; then reasoning & aggregating over
several orderings of the pre-ranking top-k (majority vote, probability averaging, agreement).
``--ablate`` also trains rankers on the LLM labels only and on the feedback only.
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
from ranking.feedback import FeedbackStore, feedback_lists
from ranking.listwise import ListwiseData, concat
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
        feedback_per_query=6,  # simulated feedback events per train question (0: LLM labels only)
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
    train_data: ListwiseData  # LLM-labelled lists + feedback lists (concatenated)
    heldout_questions: list[str]
    heldout_golds: list[str]
    seconds: dict[str, float]
    llm_data: ListwiseData | None = None
    feedback_data: ListwiseData | None = None
    feedback_path: Path | None = None
    feedback_stats: dict[str, float] = dataclasses.field(default_factory=dict)


def simulate_feedback(
    scorer: LLMScorer,
    cands: Candidates,
    pool_ids: Sequence[str],
    pool_texts: Sequence[str],
    questions: Sequence[str],
    golds: Sequence[str],
    k: int,
    per_query: int,
    path: str | Path,
    seed: int = 0,
    options: Sequence[str] = so.CODES,
) -> dict[str, float]:
    """Write a feedback JSONL log of a simulated user (see the module docstring); returns its stats.

    For each question, ``per_query`` random ordered ``k``-subsets of its candidate list are "shown";
    the LLM answers with its most likely option; the user (who knows the gold answer) copies a
    right answer and regenerates (half of the time) or dislikes a wrong one. Events carry the shown
    document ids in prompt order, as :mod:`ranking.feedback` expects.
    """
    rng = np.random.default_rng(seed)
    shown: list[list[int]] = []
    owner: list[int] = []
    for i in range(len(questions)):
        pool = cands.indices[i][cands.where[i]]
        for _ in range(per_query):
            shown.append([int(x) for x in rng.choice(pool, min(k, len(pool)), replace=False)])
            owner.append(i)
    prompts = [so.prompt_text([pool_texts[j] for j in lst], questions[q]) for lst, q in zip(shown, owner, strict=True)]
    answers = scorer.option_logprobs(prompts, list(options)).argmax(1) if prompts else np.zeros(0, int)
    counts = {"copy": 0, "regenerate": 0, "dislike": 0}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for n, (lst, q, a) in enumerate(zip(shown, owner, answers, strict=True)):
            right = options[int(a)] == golds[q]
            fb = "copy" if right else ("regenerate" if rng.random() < 0.5 else "dislike")
            counts[fb] += 1
            row = {"id": f"sim-{seed}-{n}", "query": questions[q], "shown": [pool_ids[j] for j in lst],
                   "feedback": fb, "answer": options[int(a)]}
            f.write(json.dumps(row) + "\n")
    total = max(len(shown), 1)
    return {"events": len(shown), **{f"{k_}_rate": v / total for k_, v in counts.items()}}


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
    llm_data = label_candidates(scorer, cands, texts, train_q, train_gold, k=scfg.k,
                                m=scfg.orders_per_query, prompt_fn=so.prompt_text, seed=scfg.seed,
                                progress=progress)
    secs["llm_labels"] = time.perf_counter() - t

    # Simulated users -> a feedback JSONL log -> read back like a real log -> listwise lists.
    fb_data, fb_path, fb_stats = None, None, {}
    if scfg.feedback_per_query > 0:
        t = time.perf_counter()
        fb_path = out / "feedback.jsonl"
        fb_stats = simulate_feedback(scorer, cands, index.ids, texts, train_q, train_gold, scfg.k,
                                     scfg.feedback_per_query, fb_path, seed=scfg.seed + 7)
        store = FeedbackStore()
        store.ingest(fb_path)  # errors="raise": the simulated log must be valid
        fb_data, notes = feedback_lists(store.events, {d: i for i, d in enumerate(index.ids)}, gen.generate,
                                        on_unknown="raise")
        if fb_data is None:
            raise RuntimeError(f"{fb_path}: no usable feedback ({notes})")
        secs["feedback"] = time.perf_counter() - t
    data = concat([llm_data, fb_data]) if fb_data is not None else llm_data
    held_q = [so.question_text(k) for k in world.heldout_keys]
    held_gold = [so.answer_text(world.truth[k]) for k in world.heldout_keys]
    return Prepared(world, llm, scorer, encoder, pool_emb, pre, pre_path, gen, data, held_q, held_gold, secs,
                    llm_data, fb_data, fb_path, fb_stats)


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


def _cascade(p: Prepared, ranker_dir: str | Path | None, scfg: Any, mesh: Mesh):
    """The real cascade over the pool (embeddings reused), with the trained pre-ranker."""
    from ranking.cascade import PistisCascade

    return PistisCascade(p.world.pool_texts, None if ranker_dir is None else str(ranker_dir), mesh=mesh,
                         encoder=p.encoder, n_match=scfg.n_match, n_prerank=scfg.n_prerank,
                         embeddings=p.pool_emb, preranker=p.preranker)


BASELINES: tuple[str, ...] = ("random", "ranker_set_shuffled", "prerank", "prerank_reversed")


def evaluate(
    p: Prepared,
    ranker_dir: str | Path,
    scfg: Any,
    mesh: Mesh,
    extra_rankers: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Held-out comparison of orderings (see the module docstring)."""
    ranked = _cascade(p, ranker_dir, scfg, mesh)
    fallback = _cascade(p, None, scfg, mesh)
    qs, golds, k = p.heldout_questions, p.heldout_golds, scfg.k
    cands: Candidates = fallback.candidates(qs)
    ranker_lists = ranked.rank(qs, k)
    prerank_lists = fallback.order(cands, k)
    rng = np.random.default_rng(scfg.seed + 99)
    random_lists, shuffled_lists = [], []
    for i in range(len(qs)):
        pool = cands.indices[i][cands.where[i]]
        random_lists.append([[int(x) for x in rng.choice(pool, min(k, len(pool)), replace=False)]
                             for _ in range(scfg.random_orders)])
        mine = ranker_lists[i]
        perms = orderings(rng, len(mine), scfg.random_orders + 1)[1:]  # not the ranker's own order
        shuffled_lists.append([[mine[j] for j in perm] for perm in perms] or [mine])
    results: dict[str, Any] = {"heldout_questions": len(qs), "k": k}
    per_q: dict[str, np.ndarray] = {}
    for name, lists in (
        ("ranker", [[x] for x in ranker_lists]),
        ("random", random_lists),
        ("ranker_set_shuffled", shuffled_lists),
        ("prerank", [[x] for x in prerank_lists]),
        ("prerank_reversed", [[x[::-1]] for x in prerank_lists]),
    ):
        lp, acc = _score_orders(p, qs, golds, lists)
        per_q[name] = lp
        results[name] = {"logp_gold": float(lp.mean()), "accuracy": float(acc.mean())}
    # per held-out question: does the ranker's order give the gold answer a higher log p?
    results["paired"] = {
        base: {"wins": int(np.sum(per_q["ranker"] > per_q[base] + 1e-6)),
               "losses": int(np.sum(per_q["ranker"] < per_q[base] - 1e-6)),
               "ties": int(np.sum(np.abs(per_q["ranker"] - per_q[base]) <= 1e-6))}
        for base in BASELINES
    }
    for name, directory in (extra_rankers or {}).items():
        lists = _cascade(p, directory, scfg, mesh).rank(qs, k)
        lp, acc = _score_orders(p, qs, golds, [[x] for x in lists])
        results.setdefault("ablation", {})[name] = {"logp_gold": float(lp.mean()), "accuracy": float(acc.mean())}
    # reasoning & aggregating over several orderings of the pre-ranking (and the ranker's) top-k
    results["aggregate_prerank_orderings"] = _aggregate_orderings(p, qs, golds, prerank_lists, scfg, rng)
    results["aggregate_ranker_orderings"] = _aggregate_orderings(p, qs, golds, ranker_lists, scfg, rng)
    return results


def _aggregate_orderings(
    p: Prepared, qs: Sequence[str], golds: Sequence[str], lists: Sequence[Sequence[int]], scfg: Any,
    rng: np.random.Generator,
) -> dict[str, float]:
    """Answer each question under ``aggregate_orders`` orderings of its k demonstrations (the given
    order first), combine by majority vote and by probability averaging, and report agreement."""
    votes, avgs, agree, pair, single = [], [], [], [], []
    texts = p.world.pool_texts
    for i, q in enumerate(qs):
        demos = lists[i]
        perms = orderings(rng, len(demos), scfg.aggregate_orders)
        prompts = [so.prompt_text([texts[demos[j]] for j in perm], q) for perm in perms]
        agg = aggregate(p.scorer.option_logprobs(prompts, list(so.CODES)))
        gold = so.CODES.index(golds[i])
        votes.append(agg.vote == gold)
        avgs.append(agg.average == gold)
        single.append(np.mean(agg.per_prompt == gold))
        agree.append(agg.agreement_vote)
        pair.append(agg.pairwise)
    return {
        "orderings": int(scfg.aggregate_orders), "single_prompt_accuracy": float(np.mean(single)),
        "vote_accuracy": float(np.mean(votes)), "average_accuracy": float(np.mean(avgs)),
        "agreement": float(np.mean(agree)), "pairwise_agreement": float(np.mean(pair)),
    }


def run(
    scfg: Any | None = None,
    train_cfg: Any | None = None,
    model_cfg: Any | None = None,
    mesh: Mesh | None = None,
    workdir: str | Path | None = None,
    encoder=None,
    progress: bool = True,
    ablate: bool = False,
) -> dict[str, Any]:
    """The whole experiment; returns the results dict (also written to ``workdir/results.json``).

    ``ablate``: also train rankers on the LLM labels only and on the feedback only (into
    ``workdir/llm_labels_only`` and ``workdir/feedback_only``) and report their held-out numbers.
    """
    from ranking.train import default_train_config, fit_ranker

    scfg = scfg if scfg is not None else default_config()
    tcfg = train_cfg if train_cfg is not None else default_train_config()
    mesh = mesh if mesh is not None else make_mesh(data=1, fsdp=-1, tensor=1)
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="pistis-order-"))
    t0 = time.perf_counter()
    p = prepare(scfg, mesh, workdir, encoder, progress)
    t = time.perf_counter()
    fit = fit_ranker(p.train_data, tcfg, model_cfg, mesh, workdir, seed=scfg.seed, progress=progress,
                     preranker_path=p.preranker_path)
    p.seconds["ranker_train"] = time.perf_counter() - t
    extra: dict[str, Path] = {}
    if ablate:
        t = time.perf_counter()
        for name, data in (("llm_labels_only", p.llm_data), ("feedback_only", p.feedback_data)):
            if data is not None:
                fit_ranker(data, tcfg, model_cfg, mesh, workdir / name, seed=scfg.seed, progress=progress,
                           preranker_path=p.preranker_path)
                extra[name] = workdir / name
        p.seconds["ablation_train"] = time.perf_counter() - t
    t = time.perf_counter()
    results = evaluate(p, workdir, scfg, mesh, extra)
    p.seconds["evaluate"] = time.perf_counter() - t
    p.seconds["total"] = time.perf_counter() - t0
    results["llm_final_loss"] = float(np.mean(p.llm.history[-20:]))
    results["llm_rule_fidelity"] = so.rule_fidelity(p.llm, decay=scfg.decay)
    results["ranker_loss"] = [float(np.mean([h["loss"] for h in fit.history[:10]])),
                              float(np.mean([h["loss"] for h in fit.history[-10:]]))]
    n_llm = 0 if p.llm_data is None else int(p.llm_data.list_mask.sum())
    n_fb = 0 if p.feedback_data is None else int(p.feedback_data.list_mask.sum())
    results["train"] = {"questions": len(p.world.train_keys), "candidate_lists": len(p.train_data),
                        "llm_labelled_orderings": n_llm, "feedback_lists": n_fb}
    results["feedback"] = {**p.feedback_stats, "log": None if p.feedback_path is None else str(p.feedback_path)}
    results["seconds"] = {k: round(v, 1) for k, v in p.seconds.items()}
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results


LABELS: tuple[tuple[str, str], ...] = (
    ("ranker", "ranker order"),
    ("random", "random k-subset, random order"),
    ("ranker_set_shuffled", "ranker's k demos, shuffled"),
    ("prerank", "pre-ranking order (best first)"),
    ("prerank_reversed", "pre-ranking order reversed (best last)"),
)


def format_results(r: dict[str, Any]) -> str:
    lines = []
    if "llm_rule_fidelity" in r:
        f = r["llm_rule_fidelity"]
        lines.append(f"tiny LLM vs its training rule: KL {f['kl']:.3f}, same argmax {f['argmax_agreement']:.3f}")
    if "train" in r:
        t, fb = r["train"], r.get("feedback", {})
        line = (f"train: {t['questions']} questions, {t['llm_labelled_orderings']} LLM-labelled orderings, "
                f"{t['feedback_lists']} feedback lists")
        if fb.get("events"):
            line += (f" (simulated log: copy {fb['copy_rate']:.2f}, regenerate {fb['regenerate_rate']:.2f}, "
                     f"dislike {fb['dislike_rate']:.2f})")
        lines.append(line)
    lines.append(f"held-out questions: {r['heldout_questions']}, k = {r['k']} demonstrations (SYNTHETIC task)")
    for name, label in LABELS:
        row = f"  {label:<40s} log p(gold) {r[name]['logp_gold']:7.3f}   accuracy {r[name]['accuracy']:.3f}"
        if name in r.get("paired", {}):
            w = r["paired"][name]
            row += f"   ranker wins/ties/losses {w['wins']}/{w['ties']}/{w['losses']}"
        lines.append(row)
    for name, v in r.get("ablation", {}).items():
        label = f"ranker trained on {name.replace('_', ' ')}"
        lines.append(f"  {label:<40s} log p(gold) {v['logp_gold']:7.3f}   accuracy {v['accuracy']:.3f}")
    for key, what in (("aggregate_prerank_orderings", "pre-ranking"), ("aggregate_ranker_orderings", "ranker's")):
        if key not in r:
            continue
        a = r[key]
        lines.append(f"  answer under {a['orderings']} orderings of the {what} top-k: one prompt accuracy "
                     f"{a['single_prompt_accuracy']:.3f} -> majority vote {a['vote_accuracy']:.3f}, "
                     f"probability average {a['average_accuracy']:.3f}; agreement with the vote "
                     f"{a['agreement']:.3f}, pairwise agreement {a['pairwise_agreement']:.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    from absl import flags
    from absl import logging as absl_logging

    from ranking.cli import user_errors

    del argv
    f = flags.FLAGS
    if not f["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    from ranking.train import default_train_config, validate_train_config

    scfg = default_config()
    scfg.n_keys, scfg.llm_steps, scfg.seed = f.n_keys, f.llm_steps, f.seed
    scfg.feedback_per_query = f.feedback_per_query
    tcfg = default_train_config()
    tcfg.steps = f.ranker_steps
    with user_errors():
        if not 10 <= f.n_keys <= len(so.KEYS):
            raise ValueError(f"--n_keys must be in [10, {len(so.KEYS)}], got {f.n_keys}")
        validate_train_config(tcfg)
        if f.workdir and Path(f.workdir).exists() and not Path(f.workdir).is_dir():
            raise ValueError(f"--workdir {f.workdir} exists and is not a folder")
    r = run(scfg, tcfg, workdir=f.workdir, ablate=f.ablate)
    print(format_results(r))
    print(f"timings (s): {r['seconds']}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_integer("n_keys", 160, "Number of facts (questions); 30% are held out.")
    flags.DEFINE_integer("llm_steps", 500, "Training steps of the tiny decoder.", lower_bound=1)
    flags.DEFINE_integer("ranker_steps", 300, "Training steps of the ranker.", lower_bound=1)
    flags.DEFINE_integer("feedback_per_query", 6, "Simulated feedback events per train question "
                         "(0: train on the LLM labels only).", lower_bound=0)
    flags.DEFINE_bool("ablate", False, "Also train rankers on LLM labels only and on feedback only.")
    flags.DEFINE_integer("seed", 0, "Seed of the world, the LLM and the ranker.")
    flags.DEFINE_string("workdir", None, "Where to keep the ranker, feedback log and results.json "
                        "(default: a temp dir).")
    app.run(main)
