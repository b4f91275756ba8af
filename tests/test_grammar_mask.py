"""Grammar mask: DFA vs ``parse_action``, token lifting, and masked sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from env_server.actions import KEYS, Action, ActionError, ActionSchema, Ref, api, parse_action
from jaxrl_desktop.grammar_mask import (
    advance,
    allowed_tokens,
    build_char_dfa,
    build_token_grammar,
)
from jaxrl_desktop.model_configs import get_config
from jaxrl_desktop.models import Decoder
from jaxrl_desktop.sampling import SamplingConfig, sample
from jaxrl_desktop.tokenizer import Tokenizer

SCHEMA = ActionSchema.build([
    api("files.mkdir", ("path", "str")),
    api("files.rename", ("src", "str"), ("dst", "str")),
    api("sheet.set_cell", ("row", "int"), ("col", "int"), ("value", "value")),
    api("settings.set", ("name", "str"), ("enabled", "bool")),
    api("chart.scale", ("factor", "num")),
    api("editor.goto", ("line", "int")),
])
DFA = build_char_dfa(SCHEMA)


def _parses(text: str) -> bool:
    try:
        parse_action(text, SCHEMA)
    except ActionError:
        return False
    return True


# ------------------------------------------------------------------ strategies (canonical text)
_text = st.text(
    alphabet=st.one_of(st.characters(codec="utf-8").filter(str.isprintable), st.sampled_from("\n\t\"\\")),
    max_size=12,
)
_ints = st.integers(-999_999_999, 999_999_999)


@st.composite
def _floats(draw) -> float:
    whole = draw(st.integers(-99_999, 99_999))
    frac = draw(st.integers(0, 9999))
    value = float(f"{whole}.{frac}")
    return value if "e" not in repr(value) else 0.5


def _value(kind: str):
    return {
        "str": _text,
        "int": _ints,
        "num": st.one_of(_ints, _floats()),
        "ref": st.integers(0, 999_999_999).map(Ref),
        "bool": st.booleans(),
        "value": st.one_of(_text, _ints, _floats(), st.booleans()),
        "key": st.sampled_from(sorted(KEYS)),
    }[kind]


@st.composite
def actions(draw) -> Action:
    name = draw(st.sampled_from(sorted(SCHEMA.actions)))
    adef = SCHEMA.actions[name]
    sig = draw(st.sampled_from(adef.signatures))
    kinds = [p.kind for p in sig.params]
    if sig.variadic:
        kinds += [kinds[-1]] * draw(st.integers(0, sig.max_args - len(kinds)))
    return Action(name, adef.kind, tuple(draw(_value(k)) for k in kinds))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions())
def test_dfa_accepts_every_canonical_action(action):
    text = action.to_text()
    assert DFA.accepts(text), text
    parsed = parse_action(text, SCHEMA)
    assert parsed.name == action.name and len(parsed.args) == len(action.args)


def test_dfa_rejects_invalid_or_non_canonical_text():
    bad = [
        "click(1)", 'click("a")', "click(#1, 2)", "files.mkdir(1)", "files.mkdir()", 'hotkey("ctrlx")',
        'hotkey("CTRL")', "done(", "done() ", "nope()", 'type("a\\q")', "scroll(1234567890)", "scroll(1.5)",
        'type("a"', "type('a')", "click(1,2)", 'hotkey("a", "b", "c", "d", "e", "f", "g", "h", "i")',
        "settings.set(\"x\", 1)", "sheet.set_cell(1, 2, #3)", 'type("a\nb")', "chart.scale(1e5)", "",
    ]
    for text in bad:
        assert not DFA.accepts(text), text


def _char_distances() -> np.ndarray:
    dist = np.full(DFA.table.shape[0], 10**6)
    dist[DFA.accept] = 0
    for _ in range(200):
        dist = np.minimum(dist, 1 + dist[DFA.table].min(axis=1))
    return dist


_DIST = _char_distances()


def _random_walk(rng: np.random.Generator, max_len: int = 60) -> bytes:
    """A random accepted byte string: random allowed bytes, biased towards finishing."""
    dist = _DIST
    state, out = DFA.start, bytearray()
    while True:
        if DFA.accept[state] and (rng.random() < 0.3 or len(out) > max_len):
            return bytes(out)
        nxt = DFA.table[state]
        ok = np.nonzero(nxt != DFA.dead)[0]
        if len(ok) == 0:  # the end of an action
            assert DFA.accept[state]
            return bytes(out)
        if len(out) > max_len or rng.random() < 0.5:
            ok = ok[dist[nxt[ok]] < max(dist[state], 1)]
        b = int(rng.choice(ok))
        out.append(b)
        state = int(nxt[b])


def test_every_dfa_string_parses():
    rng = np.random.default_rng(0)
    names = set()
    for _ in range(2000):
        text = _random_walk(rng).decode("utf-8", errors="replace")
        action = parse_action(text, SCHEMA)
        names.add(action.name)
    assert names == set(SCHEMA.actions)  # the walk covers every action


# -------------------------------------------------------------------------- token level
@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    rng = np.random.default_rng(1)
    texts = []
    for _ in range(300):
        texts.append(_random_walk(rng).decode("utf-8", errors="replace"))
        texts.append("The file manager shows folders; 网络 设置 and the editor. " * 2)
    return Tokenizer.train(texts, vocab_size=600)


def test_token_table_agrees_with_the_char_dfa(tokenizer):
    pieces = tokenizer.token_bytes()
    g = build_token_grammar(DFA, pieces, tokenizer.eos_id, vocab_size=tokenizer.vocab_size + 40)
    assert g.table.shape == (DFA.num_states + 1, tokenizer.vocab_size + 40) and g.table.dtype == jnp.int16
    table = np.asarray(g.table)
    assert (table[:, tokenizer.vocab_size :] == g.dead).all()  # padded ids are never allowed
    assert (table[:, tokenizer.eos_id] == g.dead).all()
    rng = np.random.default_rng(2)
    for _ in range(300):  # random states x random tokens
        s, t = int(rng.integers(0, DFA.num_states)), int(rng.integers(0, tokenizer.vocab_size))
        expect = g.dead if pieces[t] in (None, b"") or t == tokenizer.eos_id else DFA.run(pieces[t], s)
        assert table[s, t] == expect
    # tokenized canonical actions walk through the table and end accepting
    for text in ['files.rename("/tmp/a b.txt", "网络")', "click(#12)", 'hotkey("ctrl", "shift", "t")',
                 "sheet.set_cell(3, -4, 2.25)", "done()"]:
        state = g.start
        for t in tokenizer.encode(text):
            state = int(table[state, t])
            assert state != g.dead, text
        assert bool(g.accept[state])


def test_allowed_tokens_respects_the_budget(tokenizer):
    g = build_token_grammar(DFA, tokenizer.token_bytes(), tokenizer.eos_id)
    state = g.initial_state(2)
    big = np.asarray(allowed_tokens(g, state, 100))
    tight = np.asarray(allowed_tokens(g, state, g.min_tokens))
    assert big.sum() > tight.sum() > 0 and not big[:, tokenizer.eos_id].any()
    # from "done()" (accepting) only the end token fits in a budget of 1
    s = jnp.asarray([DFA.run("done()")] * 2)
    only_end = np.asarray(allowed_tokens(g, s, 1))
    assert only_end[:, tokenizer.eos_id].all() and only_end.sum() == 2
    assert int(advance(g, s, jnp.asarray([tokenizer.encode("x")[0]] * 2))[0]) == g.dead


def _random_model(vocab: int) -> Decoder:
    cfg = get_config("tiny", vocab_size=vocab)
    graphdef, state = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    new = [x if x.ndim == 1 else jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, new))


def test_masked_sampling_always_parses(tokenizer):
    """Random-logit sampling (a random model) with the mask: every action parses; without: almost none."""
    vocab = tokenizer.vocab_size + 8  # padded model vocab
    model = _random_model(vocab)
    g = build_token_grammar(DFA, tokenizer.token_bytes(), tokenizer.eos_id, vocab_size=vocab)
    n = 128
    prompt_ids = tokenizer.encode("<|user|>make a folder<|action|>")
    prompts = jnp.asarray(np.tile(prompt_ids, (n, 1)), jnp.int32)
    pmask = jnp.ones_like(prompts, bool)
    results = {}
    for budget in (g.min_tokens, 40):
        cfg = SamplingConfig(max_new_tokens=budget, temperature=1.0, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
        for masked in (True, False):
            out = sample(model, prompts, pmask, jax.random.key(budget), cfg, g if masked else None)
            texts = [tokenizer.decode(np.asarray(row)[np.asarray(m)]) for row, m in zip(out.tokens, out.mask, strict=True)]
            ok = [_parses(t) for t in texts]
            results[budget, masked] = (float(np.mean(ok)), texts, np.asarray(out.finished))
    for budget in (g.min_tokens, 40):
        rate, texts, finished = results[budget, True]
        assert rate == 1.0, [t for t in texts if not _parses(t)][:5]
        assert finished.all()  # every masked sample ended with the end token within the budget
        assert results[budget, False][0] < 0.2
    assert len(set(results[40, True][1])) > n // 5  # diverse, not one memorised action
