"""LLM labels: batched, sharded log p(answer | prompt) equals a direct forward pass; order sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_desktop.mesh import make_mesh
from jaxrl_desktop.model_configs import get_config
from jaxrl_desktop.models import Decoder
from ranking import synthetic_order as so
from ranking.candidates import Candidates
from ranking.llm_labels import LLMScorer, label_candidates, sample_orders


@pytest.fixture(scope="module")
def llm():
    tok = so.make_tokenizer()
    cfg = get_config("tiny", vocab_size=-(-tok.vocab_size // 8) * 8, max_seq_len=64)
    return Decoder(cfg, rngs=nnx.Rngs(3)), tok


def _direct(model, tok, prompt: str, answer: str) -> float:
    ids = [tok.bos_id, *tok.encode(prompt)]
    ans = tok.encode(answer)
    seq = jnp.asarray([ids + ans])
    logp = jax.nn.log_softmax(model(seq)[0], axis=-1)
    return float(sum(logp[len(ids) - 1 + j, a] for j, a in enumerate(ans)))


def test_batched_sharded_logprob_matches_direct(llm):
    model, tok = llm
    scorer = LLMScorer(model, tok, make_mesh(2, 2, 2), batch_size=4)
    rng = np.random.default_rng(0)
    prompts, answers = [], []
    for n in (0, 1, 3, 5, 2, 6, 1):  # different lengths: several buckets and padded rows
        demos = [so.demo_text(str(rng.choice(so.SOURCES)), str(rng.choice(so.KEYS)), str(rng.integers(10)))
                 for _ in range(n)]
        prompts.append(so.prompt_text(demos, so.question_text("apple")))
        answers.append(str(rng.integers(10)) if n % 2 else "4 ; 5")  # multi-token answers too
    got = scorer.logprob(prompts, answers)
    want = [_direct(model, tok, p, a) for p, a in zip(prompts, answers, strict=True)]
    np.testing.assert_allclose(got, want, atol=2e-4)
    opts = scorer.option_logprobs(prompts[:2], list(so.CODES))
    assert opts.shape == (2, 10)
    np.testing.assert_allclose(opts[1, 7], _direct(model, tok, prompts[1], "7"), atol=2e-4)
    with pytest.raises(ValueError, match="prompts but"):
        scorer.logprob(["a"], [])


def test_long_prompts_keep_their_end(llm):
    model, tok = llm
    scorer = LLMScorer(model, tok, make_mesh(1, 1, 1, devices=jax.devices()[:1]), max_length=12)
    long = so.prompt_text([so.demo_text("manual", "apple", "3")] * 10, so.question_text("apple"))
    short = " ".join(long.split()[-11:])  # the last 11 words; no bos fits any more
    got = scorer.logprob([long], ["3"])[0]
    ids = tok.encode(short) + tok.encode("3")
    logp = jax.nn.log_softmax(model(jnp.asarray([ids]))[0], -1)
    np.testing.assert_allclose(got, float(logp[len(ids) - 2, ids[-1]]), atol=2e-4)


def test_sample_orders():
    rng = np.random.default_rng(0)
    o = sample_orders(rng, 6, 3, 20, seed_lists=[[0, 1, 2]])
    assert o.shape == (20, 3) and len({tuple(r) for r in o}) == 20
    assert all(len(set(r)) == 3 and max(r) < 6 for r in o)
    assert sum(sorted(r) == [0, 1, 2] for r in o.tolist()) >= 5  # half are seed permutations (6 exist)
    assert sample_orders(rng, 3, 3, 50).shape == (6, 3)  # only 3! distinct lists exist
    assert sample_orders(rng, 2, 5, 4).shape[1] == 2
    assert sample_orders(rng, 0, 3, 4).size == 0


def test_label_candidates_shapes(llm):
    model, tok = llm
    scorer = LLMScorer(model, tok, make_mesh(1, 2, 1, devices=jax.devices()[:2]))
    texts = [so.demo_text("manual", k, "1") for k in so.KEYS[:10]]
    idx = np.array([[3, 1, 4, 0, -1], [2, 5, 6, 7, 8]])
    where = idx >= 0
    cands = Candidates(idx, np.zeros(idx.shape, np.float32), np.zeros(idx.shape, np.float32), where,
                       np.zeros((*idx.shape, 4), np.float32), np.zeros((2, 4), np.float32),
                       np.zeros((*idx.shape, 10), np.float32))
    data = label_candidates(scorer, cands, texts, ["what is apple ?", "what is anchor ?"], ["1", "2"], k=3, m=5)
    assert data.orders.shape == (2, 5, 3) and data.list_mask.all()
    assert (data.orders[0] < 4).all()  # never the padded candidate
    i, j = 1, 2
    demos = [texts[idx[i, c]] for c in data.orders[i, j]]
    np.testing.assert_allclose(data.rewards[i, j], _direct(model, tok, "\n".join([*demos, "what is anchor ?"]), "2"),
                               atol=2e-4)
