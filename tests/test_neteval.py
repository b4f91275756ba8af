"""NetEval harness: loaders, prompts, demonstration selectors, batched log-likelihoods vs a direct
forward, acc/acc_norm, and the end-to-end report."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eval import demos as demos_mod
from eval.loglik import ROW_LENGTHS, LoglikScorer, Request, encode_requests
from eval.mcq_data import (
    DataError,
    MCQItem,
    detect_language,
    load_mcq,
    load_neteval_csv,
    load_neteval_jsonl,
    load_opseval,
    sample_path,
)
from eval.metrics import bootstrap_ci, score_question, summarize
from eval.models import LoadedModel, load_model, load_policy_checkpoint
from eval.neteval import (
    EvalConfig,
    OverlongError,
    choose_demos,
    evaluate,
    notes,
    sample_items,
    write_outputs,
)
from eval.prompts import PromptConfig, build_prompt, candidates
from jaxrl_desktop.mesh import make_mesh
from jaxrl_desktop.models import Decoder, get_config, shift_logprobs
from jaxrl_desktop.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- loaders
def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _row(**kw) -> str:
    base = {"question": "Which port does SSH use?", "A": "21", "B": "22", "C": "23", "D": "25",
            "answer": "B", "subdomain": "Security", "language": "en"}
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not None}, ensure_ascii=False)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"question": "x", "A": "1"', "invalid JSON"),
        (_row(question=None), "field 'question' is missing"),
        (_row(answer="E"), "not made of option letters A-D"),
        (_row(answer=""), "field 'answer'"),
        (_row(C=None), "option 'D' given but 'C' is missing"),
        (_row(B=None, C=None, D=None), "needs option fields 'A' and 'B'"),
        (_row(language="fr"), "must be en or zh"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, bad_line, message):
    path = _write(tmp_path / "q.jsonl", [_row(id="q1"), "", _row(id="q2"), bad_line])
    with pytest.raises(DataError, match=message) as e:
        load_neteval_jsonl(path)
    assert f"{path}:4" in str(e.value)


def test_csv_loader_and_errors(tmp_path):
    good = tmp_path / "ok.csv"
    with good.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "question", "A", "B", "C", "D", "answer", "subdomain", "language"])
        w.writerow(["1", "Which port does SSH use?", "21", "22", "23", "25", "B", "Security", "en"])
        w.writerow(["2", "BGP 使用哪个 TCP 端口？", "179", "520", "89", "443", "A", "IP Connectivity", ""])
    items = load_neteval_csv(good)
    assert [it.answers for it in items] == [(1,), (0,)]
    assert [it.language for it in items] == ["en", "zh"]  # the empty language cell is detected
    bad = tmp_path / "bad.csv"
    bad.write_text(good.read_text(encoding="utf-8") + "3,What?,a,b,c,d,Z,Security,en\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{bad}:4: answer 'Z'"):
        load_neteval_csv(bad)
    extra = tmp_path / "extra.csv"
    extra.write_text(good.read_text(encoding="utf-8") + "3,What?,a,b,c,d,A,Security,en,surplus\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{extra}:4: more fields than header"):
        load_neteval_csv(extra)
    with pytest.raises(DataError, match="header row"):
        load_neteval_csv(_write(tmp_path / "nohead.csv", ["1,2,3"]))


def test_opseval_errors_name_item(tmp_path):
    rows = [{"id": "x-1", "type": 0, "question": "q?", "choices": ["a", "b"], "answer": "A", "topic": []},
            {"id": "x-2", "type": 0, "question": "q?", "choices": ["a"], "answer": "A", "topic": []}]
    p = tmp_path / "t.json"
    p.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"item 1 \(id x-2\): field 'choices'"):
        load_opseval(p)
    rows[1] = {"id": "x-2", "type": 0, "question": "q?", "choices": ["a", "b", "c"], "answer": "A,C"}
    p.write_text(json.dumps(rows))
    with pytest.raises(DataError, match="type 0"):
        load_opseval(p)
    with pytest.raises(DataError, match="format"):
        load_mcq(tmp_path / "data.txt")


def test_real_opseval_wired_network(shared_dir):
    folder = shared_dir / "data" / "opseval_wired_network"
    items = load_mcq(folder / "test.json", "opseval")
    assert len(items) == 1558
    langs = [it.language for it in items]
    assert langs.count("en") == 780 and langs.count("zh") == 778
    multi = [it for it in items if it.is_multi]
    assert len(multi) == 296
    assert {len(it.options) for it in items} == {2, 3, 4, 5, 6, 7, 8, 9}
    assert all(max(it.answers) < len(it.options) for it in items)
    assert all(it.subdomain for it in items)
    dev = load_mcq(folder, "opseval")  # a folder means its test.json
    assert len(dev) == 1558
    assert len(load_opseval(folder / "dev.json")) == 5


def test_sample_set_is_complete(tmp_path):
    items = load_mcq(sample_path())
    assert len(items) >= 40
    assert {it.language for it in items} == {"en", "zh"}
    assert {it.subdomain for it in items} == {
        "Network Access", "IP Connectivity", "IP Services", "Security", "Automation and Programmability"}
    assert all(it.language == detect_language(it.question) for it in items)
    # the same questions as CSV load identically
    path = tmp_path / "sample.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "question", "A", "B", "C", "D", "answer", "subdomain", "language"])
        for it in items:
            w.writerow([it.id, it.question, *it.options, it.answer_letters, it.subdomain, it.language])
    assert [dataclass_fields(x) for x in load_mcq(path, "neteval_csv")] == [dataclass_fields(x) for x in items]


def dataclass_fields(it: MCQItem) -> tuple:
    return (it.id, it.question, it.options, it.answers, it.subdomain, it.language)


# ------------------------------------------------------------------------------- prompts
ITEMS = [
    MCQItem("e1", "Which port does SSH use?", ("21", "22", "23"), (1,), "Security", "en"),
    MCQItem("e2", "Which are routing protocols?", ("OSPF", "HTTP", "BGP", "FTP"), (0, 2), "IP Connectivity", "en"),
    MCQItem("z1", "BGP 使用哪个 TCP 端口？", ("179", "520"), (0,), "IP Connectivity", "zh"),
]


def test_kshot_prompt_construction():
    q, d1, d2 = ITEMS[0], ITEMS[1], ITEMS[2]
    p = build_prompt(q, [d1, d2])
    assert p.startswith("The following are multiple choice questions")
    assert p.index("Which are routing protocols?") < p.index("BGP 使用") < p.index("Which port does SSH use?")
    assert "Answer: OSPF; BGP\n\n" in p  # multi-answer demonstration shows every gold option
    assert "Answer: 179\n\n" in p
    assert p.endswith("Question: Which port does SSH use?\nA. 21\nB. 22\nC. 23\nAnswer:")
    assert build_prompt(q).count("Question:") == 1
    letters = build_prompt(q, [d1], PromptConfig(answer_format="letter"))
    assert "Answer: A,C\n\n" in letters
    zh = build_prompt(ITEMS[2], [ITEMS[0]])
    assert zh.startswith("以下是关于网络运维的选择题") and zh.endswith("B. 520\n答案：")
    assert "答案： 22" not in zh and "答案：22\n\n" in zh


def test_candidates_for_multi_answer():
    topk = candidates(ITEMS[1])
    assert topk.texts == ("OSPF", "HTTP", "BGP", "FTP") and topk.pick == 2
    sets = candidates(ITEMS[1], PromptConfig(multi="sets"))
    assert len(sets.texts) == math.comb(4, 2) and sets.pick == 1
    assert sets.texts[sets.sets.index((0, 2))] == "OSPF; BGP"
    assert candidates(ITEMS[1], PromptConfig(answer_format="letter", multi="sets")).texts[1] == "A,C"


# ------------------------------------------------------------------------------- metrics
def test_acc_and_acc_norm_on_constructed_case():
    item = MCQItem("c", "q", ("a", "bbbbbbbb", "cc"), (1,))
    r = score_question(item, candidates(item), [-5.0, -8.0, -7.0])
    assert r.pred == (0,) and not r.correct  # highest sum
    assert r.pred_norm == (1,) and r.correct_norm  # -8/8 beats -5/1 and -7/2
    zh = MCQItem("z", "q", ("网络", "ab"), (0,), language="zh")
    r = score_question(zh, candidates(zh), [-9.0, -4.0])  # 6 bytes vs 2 bytes: -1.5 vs -2
    assert r.pred == (1,) and r.pred_norm == (0,)
    multi = MCQItem("m", "q", ("a", "b", "c", "d"), (0, 2))
    r = score_question(multi, candidates(multi), [-1.0, -3.0, -2.0, -4.0])
    assert r.pred == (0, 2) and r.correct
    r = score_question(multi, candidates(multi), [-1.0, -2.0, -3.0, -4.0])
    assert r.pred == (0, 1) and not r.correct
    sets = candidates(multi, PromptConfig(multi="sets"))
    ll = np.full(len(sets.texts), -10.0)
    ll[sets.sets.index((0, 2))] = -1.0
    assert score_question(multi, sets, ll).correct
    with pytest.raises(ValueError, match="scores for"):
        score_question(multi, sets, [0.0])


def test_summary_and_bootstrap():
    items = [MCQItem(f"q{i}", "q", ("a", "b"), (0,), "S1" if i < 6 else "S2", "en" if i % 2 else "zh")
             for i in range(10)]
    results = [score_question(it, candidates(it), [0.0, -1.0] if i < 7 else [-1.0, 0.0])
               for i, it in enumerate(items)]
    s = summarize(results, n_resamples=500)
    assert s["overall"]["all"]["count"] == 10 and s["overall"]["all"]["acc"] == pytest.approx(0.7)
    assert s["subdomain"]["S1"]["acc"] == 1.0 and s["subdomain"]["S2"]["acc"] == pytest.approx(0.25)
    assert s["subdomain"]["S1"]["acc_ci"] == (1.0, 1.0)
    lo, hi = s["overall"]["all"]["acc_ci"]
    assert lo < 0.7 < hi
    assert s["overall"]["all"]["chance"] == 0.5
    folded = summarize(results, n_resamples=50, max_groups=1)
    assert list(folded["subdomain"]) == ["other (2 groups)"] and "subdomain_all" in folded
    assert bootstrap_ci([0, 1] * 50, 2000) == pytest.approx((0.4, 0.6), abs=0.03)


# ------------------------------------------------------------------------ log-likelihoods
@pytest.fixture(scope="module")
def tiny_model():
    # a larger init scale than training uses, so log-probs differ clearly between tokens
    return Decoder(get_config("tiny", init_std=0.3), rngs=nnx.Rngs(0))


@nnx.jit
def _forward_logprobs(model: Decoder, toks: jax.Array, mask: jax.Array) -> jax.Array:
    return shift_logprobs(model(toks, attention_mask=mask), toks)


def _direct(model: Decoder, ctx: list[int], cont: list[int], width: int = 256) -> float:
    """One sequence through the model's own forward (right-padded to one width, so one compile;
    causal attention means the padding cannot affect the real tokens)."""
    seq = ctx + cont
    assert len(seq) <= width
    toks = np.zeros((1, width), np.int32)
    toks[0, : len(seq)] = seq
    mask = np.arange(width)[None] < len(seq)
    lp = _forward_logprobs(model, jnp.asarray(toks), jnp.asarray(mask))
    return float(np.asarray(lp)[0, len(ctx) : len(seq)].sum())


def _edge_requests() -> list[Request]:
    rng = np.random.default_rng(1)

    def ids(n: int) -> list[int]:
        return rng.integers(1, 256, n).tolist()

    reqs = [
        Request(ids(1), [ids(1), ids(1)]),  # 1-token context, 1-token options
        Request(ids(37), [ids(1), ids(60), ids(5), ids(2)]),  # very short and very long options
        Request(ids(90), [ids(3), ids(3), ids(4)]),
    ]
    reqs += [Request(ids(int(rng.integers(2, 40))), [ids(int(rng.integers(1, 12))) for _ in range(int(rng.integers(2, 7)))])
             for _ in range(8)]  # 11 requests: the last batch has padding rows
    return reqs


@pytest.mark.parametrize(
    ("reuse", "row_lengths", "max_shapes"),
    [
        (True, (128, 256), 1),
        (False, (64, 128, 256), 1),
        (True, (100,), 1),  # (100,): options split over packets
        (True, ROW_LENGTHS, 4),  # several length buckets (one compiled shape each)
        (False, ROW_LENGTHS, 4),
    ],
)
def test_loglik_matches_direct_forward(tiny_model, reuse, row_lengths, max_shapes):
    reqs = _edge_requests()
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    scorer = LoglikScorer(tiny_model, mesh, rows_per_batch=4, reuse_prefix=reuse, row_lengths=row_lengths,
                          max_shapes=max_shapes)
    planned = scorer.plan(reqs)
    got, stats = scorer.score(reqs)
    want = [[_direct(tiny_model, r.context, c) for c in r.continuations] for r in reqs]
    diff = max(abs(g - w) for gs, ws in zip(got, want, strict=True) for g, w in zip(gs, ws, strict=True))
    assert diff < 2e-4, diff
    assert min(min(w) for w in want) < -20  # the values are far from trivial
    assert stats.truncated == 0
    batches = {n: -(-rows // 4) for n, rows in stats.row_counts.items()}
    assert stats.calls == sum(batches.values())
    assert stats.computed_tokens == sum(4 * n * b for n, b in batches.items())
    assert planned.as_dict() == stats.as_dict()  # the counters do not need the forward pass
    if not reuse:
        assert stats.real_tokens == stats.naive_tokens
    elif row_lengths == (100,):  # a context is repeated only for the options that did not fit
        assert stats.unique_tokens < stats.real_tokens < stats.naive_tokens
    else:
        assert stats.real_tokens == stats.unique_tokens
    assert stats.computed_tokens % 4 == 0 and stats.computed_tokens > stats.real_tokens
    assert len(stats.shapes) == len(stats.row_counts) <= max_shapes
    if max_shapes > 1:
        assert len(stats.shapes) > 1  # these requests are worth more than one row length
        single = LoglikScorer(tiny_model, mesh, rows_per_batch=4, reuse_prefix=reuse, row_lengths=row_lengths,
                              max_shapes=1).plan(reqs)
        assert stats.modelled_cost < single.modelled_cost


def test_cached_layout_is_refilled_with_new_tokens(tiny_model):
    """The layout is cached by token counts only; requests of the same shape with other tokens
    must still be scored with their own tokens."""
    scorer = LoglikScorer(tiny_model, None, rows_per_batch=2)
    a = [Request([1, 2, 3, 4], [[5, 6], [7]]), Request([9, 8], [[3], [4, 5, 6]])]
    b = [Request([11, 12, 13, 14], [[15, 16], [17]]), Request([19, 18], [[13], [14, 15, 16]])]
    for reqs in (a, b, a):
        got, _ = scorer.score(reqs)
        want = [[_direct(tiny_model, r.context, c) for c in r.continuations] for r in reqs]
        np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), atol=2e-4)


def test_bin_packing_fills_rows():
    from eval.loglik import _pack

    rows, used = _pack([60, 40, 30, 30, 20, 20], 100)
    assert sorted(used) == [100, 100] and sorted(map(sorted, rows)) == [[0, 1], [2, 3, 4, 5]]
    rows, used = _pack([90, 70, 10], lambda n: 128 if n > 64 else 64)  # capacity from the first item
    assert used == [100, 70] and rows == [[0, 2], [1]]


def test_loglik_truncates_long_contexts_from_the_left(tiny_model):
    ctx, cont = list(range(1, 50)), [7, 8, 9]
    scorer = LoglikScorer(tiny_model, None, rows_per_batch=1, max_positions=20)
    got, stats = scorer.score([Request(ctx, [cont])])
    assert stats.truncated == 1
    assert abs(got[0][0] - _direct(tiny_model, ctx[-17:], cont)) < 1e-4
    with pytest.raises(ValueError, match="leaves no room"):
        scorer.score([Request(ctx, [list(range(1, 30))])])
    with pytest.raises(ValueError, match="empty continuation"):
        scorer.score([Request(ctx, [[]])])


@pytest.fixture(scope="module")
def sample_tokenizer():
    texts = [it.question + "\n" + "\n".join(it.options) for it in load_mcq(sample_path())]
    return Tokenizer.train(texts, vocab_size=600, min_frequency=1)


def test_encode_requests_matches_full_context_encoding(sample_tokenizer):
    """The last-line shortcut gives the tokens lm-eval's encode(ctx+cont) - encode(ctx) gives."""
    items = load_mcq(sample_path())
    tok = sample_tokenizer
    for q in (0, 7, 33):  # English and Chinese
        prompt = build_prompt(items[q], items[10:13])
        conts = [(" " if items[q].language == "en" else "") + o for o in items[q].options]
        req = encode_requests(tok, [prompt], [conts])[0]
        ctx = tok.encode(prompt)
        assert req.context == ctx
        for c, got in zip(conts, req.continuations, strict=True):
            assert got == tok.encode(prompt + c)[len(ctx):]
    with_bos = encode_requests(tok, ["Q"], [[" a"]], add_bos=True)[0]
    assert with_bos.context[0] == tok.bos_id
    assert encode_requests(tok, [""], [["a"]])[0].context == [tok.bos_id]


# ----------------------------------------------------------------------- demonstrations
def test_random_selector_is_deterministic_and_leave_one_out():
    pool = load_mcq(sample_path())
    sel = demos_mod.make_selector("random", pool, pool, seed=3)
    picks = [sel.select(i, 5) for i in range(len(pool))]
    assert all(i not in p and len(set(p)) == 5 for i, p in enumerate(picks))
    assert picks == [demos_mod.make_selector("random", pool, pool, seed=3).select(i, 5) for i in range(len(pool))]
    assert picks != [demos_mod.make_selector("random", pool, pool, seed=4).select(i, 5) for i in range(len(pool))]
    with pytest.raises(ValueError, match="only"):
        sel.select(0, len(pool))


def test_dense_selector_finds_paraphrases():
    pool = load_mcq(sample_path())
    queries = [
        MCQItem("p1", "Which routing protocol measures distance in hops?", ("OSPF", "RIP"), (1,)),
        MCQItem("p2", "What is the IETF standard first hop redundancy protocol?", ("VRRP", "HSRP"), (0,)),
        pool[0],
    ]
    sel = demos_mod.make_selector("dense", pool, queries, mesh=make_mesh(data=1, fsdp=-1, tensor=1))
    by_q = {it.question: i for i, it in enumerate(pool)}
    rip = by_q["Which routing protocol uses hop count as its metric?"]
    vrrp = by_q["Which first-hop redundancy protocol is an open IETF standard?"]
    assert sel.select(0, 3)[-1] == rip  # the most similar demonstration goes last
    assert sel.select(1, 3)[-1] == vrrp
    assert 0 not in sel.select(2, 4)  # never the query itself
    assert sel.select_all(3)[:2] == [sel.select(0, 3), sel.select(1, 3)]


def test_pistis_selector_uses_the_cascade():
    pytest.importorskip("ranking.cascade")
    pool = load_mcq(sample_path())
    queries = [pool[9], MCQItem("p1", "Which protocol counts hops to measure routes?", ("OSPF", "RIP"), (1,))]
    sel = demos_mod.make_selector("pistis", pool, queries, mesh=make_mesh(data=1, fsdp=-1, tensor=1))
    picks = sel.select_all(4)
    assert [len(p) for p in picks] == [4, 4] and 9 not in picks[0]
    assert all(len(set(p)) == 4 for p in picks)
    assert picks == [sel.select(0, 4), sel.select(1, 4)]
    assert 9 in picks[1]  # the paraphrased pool question is retrieved for the paraphrase


@pytest.fixture(scope="module")
def minilm():
    from jaxrl_desktop.encoder import SentenceEncoder

    return SentenceEncoder.from_pretrained()


@pytest.fixture(scope="module")
def trained_ranker(tmp_path_factory, minilm):
    """A tiny ranker really trained (``ranking.train.fit_ranker``, saved like ``python -m ranking.train``)
    on cascade lists of the sample set, labelled so the LEAST similar candidate is best placed last:
    an order the pre-ranker never gives, so ranker order and pre-ranking order differ."""
    pytest.importorskip("ranking.cascade")
    from ranking.cascade import PistisCascade
    from ranking.listwise import ListwiseData
    from ranking.train import default_train_config, fit_ranker

    pool = load_mcq(sample_path())
    mesh = make_mesh(data=1, fsdp=-1, tensor=1)
    cascade = PistisCascade([demos_mod.item_text(it) for it in pool], encoder=minilm, mesh=mesh, n_prerank=12)
    cands = cascade.candidates([demos_mod.item_text(it) for it in pool])
    rng = np.random.default_rng(0)
    m, k = 12, 3
    orders = np.full((len(pool), m, k), -1, np.int32)
    rewards = np.zeros((len(pool), m), np.float32)
    for i in range(len(pool)):
        valid = int(cands.where[i].sum())
        for j in range(m):
            o = rng.choice(valid, k, replace=False)
            orders[i, j], rewards[i, j] = o, -3.0 * float(cands.dense[i, o[-1]])  # low similarity last = good
    data = ListwiseData(
        query_emb=cands.query_emb, item_emb=cands.item_emb, dense=cands.dense, prerank=cands.prerank,
        where=cands.where, orders=orders, rewards=rewards, list_mask=np.ones((len(pool), m), bool),
        source=np.zeros((len(pool), m), np.int8), item_ids=cands.indices,
    )
    tcfg = default_train_config()
    tcfg.steps, tcfg.batch_lists, tcfg.warmup, tcfg.checkpoint_every, tcfg.log_every = 40, 8, 5, 40, 20
    workdir = tmp_path_factory.mktemp("neteval_ranker")
    fit_ranker(data, tcfg, dict(d_model=32, num_layers=1, num_heads=4, mlp_dim=64, init_std=0.02), mesh, workdir,
               progress=False)
    assert (workdir / "ranker.json").exists()
    return workdir


def _ranker_order(cascade, query: str, excluded: set[int], k: int) -> tuple[list[int], np.ndarray, object]:
    """The ranker's own prompt order (ascending score, best last) over the query's candidate list
    with the excluded pool items masked out."""
    from ranking.ranker import order_from_scores

    cands = cascade.candidates([query])
    where = cands.where[0] & ~np.isin(cands.indices[0], list(excluded))
    cands.where[0] = where
    scores, _ = cascade.scorer(cands.inputs())
    return [int(cands.indices[0, p]) for p in order_from_scores(scores[0], where, k)], scores[0], cands


def test_pistis_selector_keeps_the_rankers_order_with_a_trained_ranker(trained_ranker, minilm):
    """Leave-one-out with a real ranker: the selected demonstrations are the ranker's top-k in its
    order (best LAST), the query's own item never among them, and the best-ranked usable demo kept
    (the old [:k] of k+1 dropped it whenever the query's own item was not in the list)."""
    from ranking.cascade import PistisCascade

    pool = load_mcq(sample_path())
    mesh = make_mesh(data=1, fsdp=-1, tensor=1)
    k = 3
    paraphrase = MCQItem("p1", "Which protocol counts hops to measure routes?", ("OSPF", "RIP"), (1,))
    queries = [*pool[:12], paraphrase]
    sel = demos_mod.make_selector("pistis", pool, queries, mesh=mesh, ranker_dir=str(trained_ranker),
                                  encoder=minilm)
    assert sel.description.startswith(f"pistis(ranker={trained_ranker}") and "step 40" in sel.description
    picks = sel.select_all(k)
    assert picks == [sel.select(q, k) for q in range(len(queries))]
    ref = PistisCascade([demos_mod.item_text(it) for it in pool], ranker_dir=str(trained_ranker), mesh=mesh,
                        encoder=minilm)
    assert ref.has_ranker
    differs = 0
    for q, item in enumerate(queries):
        excl = sel.excluded(q)
        want, scores, cands = _ranker_order(ref, demos_mod.item_text(item), excl, k)
        assert picks[q] == want, q
        assert not set(picks[q]) & excl and len(set(picks[q])) == k
        usable = cands.where[0]
        best = int(cands.indices[0, np.argmax(np.where(usable, scores, -np.inf))])
        assert picks[q][-1] == best  # the best-ranked usable demonstration sits last, right before the question
        ranked = [int(cands.indices[0, p]) for p in np.argsort(-np.where(usable, scores, -np.inf))[:k]]
        assert picks[q] == ranked[::-1]  # ascending ranker score
        prerank = [int(i) for i in cands.indices[0][usable][:k]][::-1]
        differs += picks[q] != prerank
    assert differs > 0  # the trained ranker really reorders / reselects
    # a query that is not in the pool: exactly what the cascade itself selects
    assert picks[-1] == ref.select(demos_mod.item_text(paraphrase), k)


def test_evaluate_records_the_demo_selector(trained_ranker, minilm, sample_tokenizer, caplog):
    pytest.importorskip("ranking.cascade")
    items = load_mcq(sample_path())
    cfg = get_config("tiny", vocab_size=sample_tokenizer.vocab_size, max_seq_len=1024)
    loaded = LoadedModel(Decoder(cfg, rngs=nnx.Rngs(0)), sample_tokenizer, False, "tiny test model")
    mesh = make_mesh(data=1, fsdp=-1, tensor=1)
    ranked = evaluate(loaded, items[:6], EvalConfig(shots=3, demos="pistis", ranker_dir=str(trained_ranker),
                                                    bootstrap=20), pool=items, mesh=mesh, encoder=minilm,
                      progress=False)
    assert ranked["demo_selector"].startswith(f"pistis(ranker={trained_ranker}")
    sel = demos_mod.make_selector("pistis", items, items[:6], mesh=mesh, ranker_dir=str(trained_ranker),
                                  encoder=minilm)
    want = [[items[i].id for i in p] for p in sel.select_all(3)]
    assert [q["demos"] for q in ranked["questions"]] == want  # in the ranker's order, into the prompt
    assert ranked["fit"]["prompts_with_fewer_demos"] == 0
    with caplog.at_level("WARNING"):
        fallback = evaluate(loaded, items[:6], EvalConfig(shots=3, demos="pistis", bootstrap=20), pool=items,
                            mesh=mesh, encoder=minilm, progress=False)
    assert "prerank fallback" in fallback["demo_selector"]
    assert any("without --ranker_dir" in r.getMessage() for r in caplog.records)
    assert evaluate(loaded, items[:2], EvalConfig(shots=0, bootstrap=20), mesh=mesh,
                    progress=False)["demo_selector"] == "none (0-shot)"


def test_pistis_selector_without_cascade_module_is_a_clear_error(monkeypatch):
    real = demos_mod.importlib.util.find_spec
    monkeypatch.setattr(demos_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "ranking.cascade" else real(name, *a))
    pool = load_mcq(sample_path())
    with pytest.raises(RuntimeError, match=r"ranking/cascade\.py"):
        demos_mod.make_selector("pistis", pool, pool)
    with pytest.raises(ValueError, match="unknown demonstration selector"):
        demos_mod.make_selector("bm25", pool, pool)


# --------------------------------------------------------------------------- end to end
def test_seeded_sample_keeps_language_shares():
    items = load_mcq(sample_path())  # 31 en, 11 zh
    picked = sample_items(items, 21, seed=1)
    assert len(picked) == 21 and [it.language for it in picked].count("zh") in (5, 6)
    assert picked == sample_items(items, 21, seed=1) and picked != sample_items(items, 21, seed=2)
    assert [items.index(it) for it in picked] == sorted(items.index(it) for it in picked)  # file order
    assert sample_items(items, 100) == items


def test_model_specs():
    with pytest.raises(FileNotFoundError, match="/nonexistent is not a training workdir"):
        load_policy_checkpoint("/nonexistent")
    with pytest.raises(ValueError, match="expected hf:<dir>"):
        load_model("tiny")
    with pytest.raises(ValueError, match="unknown kind"):
        load_model("onnx:/x")


def test_evaluate_kshot_end_to_end(tmp_path, sample_tokenizer):
    items = load_mcq(sample_path())
    cfg = get_config("tiny", vocab_size=sample_tokenizer.vocab_size, max_seq_len=512, init_std=0.3)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    loaded = LoadedModel(model, sample_tokenizer, False, "tiny test model")
    mesh = make_mesh(data=4, fsdp=2, tensor=1)
    ecfg = EvalConfig(shots=2, demos="random", bootstrap=200, rows_per_batch=8)
    out = evaluate(loaded, items[:12], ecfg, pool=items, mesh=mesh, progress=False)
    qs = out["questions"]
    assert len(qs) == 12 and all(len(q["demos"]) == 2 and q["id"] not in q["demos"] for q in qs)
    assert out["summary"]["overall"]["all"]["count"] == 12
    assert out["efficiency"]["truncated"] == 0 and out["efficiency"]["prefix_saving"] > 2
    assert out["example_prompt"].count("Question:") == 3
    # the harness's first-question scores equal a direct forward of prompt + option
    first = items[0]
    req = encode_requests(sample_tokenizer, [out["example_prompt"]], [[" " + o for o in first.options]])[0]
    direct = [_direct(model, req.context, c, width=1024) for c in req.continuations]
    np.testing.assert_allclose(qs[0]["scores"], direct, atol=1e-3)
    paths = write_outputs(out, tmp_path / "res", "test run")
    assert json.loads(paths["json"].read_text())["summary"]["language"]
    assert "| Sub-domain | n | acc | 95% CI | acc_norm | 95% CI | chance |" in paths["markdown"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def _loaded_tiny(tokenizer, max_seq_len: int = 1024) -> LoadedModel:
    cfg = get_config("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=max_seq_len, init_std=0.3)
    return LoadedModel(Decoder(cfg, rngs=nnx.Rngs(0)), tokenizer, False, "tiny test model")


def test_overlong_options_stop_with_a_clear_error_or_are_skipped_and_counted(sample_tokenizer, caplog):
    items = load_mcq(sample_path())[:6]
    long_item = MCQItem("too-long", "Which one?", ("short", "x " * 150), (0,), "Security", "en")
    qs = [*items[:3], long_item, *items[3:]]
    loaded = _loaded_tiny(sample_tokenizer, max_seq_len=96)
    mesh = make_mesh(data=1, fsdp=-1, tensor=1)
    with pytest.raises(OverlongError, match=r"question 'too-long' \(#4 of 7\).*96-token limit") as e:
        evaluate(loaded, qs, EvalConfig(shots=2, bootstrap=20), mesh=mesh, progress=False)
    assert "--max_positions" in str(e.value) and "--overlong=skip" in str(e.value)
    with caplog.at_level("WARNING"):
        out = evaluate(loaded, qs, EvalConfig(shots=2, bootstrap=20, overlong="skip"), mesh=mesh, progress=False)
    assert [s["id"] for s in out["skipped"]] == ["too-long"] and out["skipped"][0]["longest_option_tokens"] > 96
    assert out["questions_total"] == 7 and out["questions_scored"] == 6
    assert out["summary"]["overall"]["all"]["count"] == 6 and "too-long" not in {q["id"] for q in out["questions"]}
    assert any("skipping 1 of 7" in r.getMessage() for r in caplog.records)
    assert any("SKIPPED 1 of 7" in line for line in notes(out))
    # the other questions get the same demonstrations as in a run without the over-long one
    alone = evaluate(loaded, qs[:3], EvalConfig(shots=2, bootstrap=20), pool=qs, mesh=mesh, progress=False)
    assert [q["demos"] for q in alone["questions"]] == [q["demos"] for q in out["questions"][:3]]
    # a limit large enough for every option: nothing skipped
    roomy = evaluate(loaded, qs, EvalConfig(shots=0, bootstrap=20, max_positions=512, overlong="skip"), mesh=mesh,
                     progress=False)
    assert roomy["skipped"] == [] and roomy["questions_scored"] == 7


def test_prompts_that_do_not_fit_lose_front_demonstrations(sample_tokenizer):
    items = load_mcq(sample_path())
    loaded = _loaded_tiny(sample_tokenizer, max_seq_len=1024)
    mesh = make_mesh(data=1, fsdp=-1, tensor=1)
    cfg = EvalConfig(shots=4, demos="random", bootstrap=20, max_positions=400)
    chosen = choose_demos(items[:10], items, cfg)
    out = evaluate(loaded, items[:10], cfg, pool=items, mesh=mesh, progress=False)
    fit = out["fit"]
    assert fit["limit"] == 400 and fit["prompts_with_fewer_demos"] > 0 and fit["prompts_truncated"] == 0
    assert out["efficiency"]["truncated"] == 0
    for q, picked in zip(out["questions"], chosen, strict=True):
        shown = q["demos"]
        assert shown == [items[i].id for i in picked][len(picked) - len(shown):]  # a suffix: the front went first
    assert fit["demos_dropped"] == sum(4 - len(q["demos"]) for q in out["questions"])
    assert any("lost" in line for line in notes(out))
    cut = evaluate(loaded, items[:10], dataclasses.replace(cfg, fit_demos=False), pool=items, mesh=mesh,
                   progress=False)
    assert cut["fit"]["prompts_with_fewer_demos"] == 0 and cut["efficiency"]["truncated"] > 0
    assert all(len(q["demos"]) == 4 for q in cut["questions"])


def test_cli_overlong_is_a_one_line_error_with_exit_code_2(shared_dir, tmp_path):
    """The README command with config:tiny (128 positions) on the real OpsEval data: no traceback,
    the question id and the flags to change, before any demonstration selection or scoring."""
    data = shared_dir / "data" / "opseval_wired_network" / "test.json"
    cmd = [sys.executable, "-m", "eval.neteval", "--model=config:tiny", f"--data={data}", "--format=opseval",
           "--shots=5", "--demos=pistis", f"--out={tmp_path}"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("neteval: error:")]
    assert len(errors) == 1, run.stderr[-2000:]
    assert "'Wired Network-107'" in errors[0] and "--max_positions" in errors[0] and "--overlong=skip" in errors[0]
    assert "embed pool" not in run.stderr  # it failed fast, before the cascade


@pytest.mark.slow
def test_cli_runs(tmp_path):
    cmd = [sys.executable, "-m", "eval.neteval", "--model=config:tiny", f"--data={sample_path()}",
           "--format=neteval_jsonl", "--limit=8", "--shots=1", "--demos=random", "--bootstrap=100",
           "--max_positions=512", f"--out={tmp_path}"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| Language |" in run.stdout and "real/computed tokens" in run.stdout
    assert {p.name for p in tmp_path.iterdir()} >= {"results.json", "results.md", "results.png"}
    bad = subprocess.run([*cmd[:3], "--model=ckpt:/nonexistent", f"--out={tmp_path}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "not a training workdir" in bad.stderr and "Traceback" not in bad.stderr
