"""Grammar-constrained decoding for the action language of ``env_server.actions``.

:func:`build_char_dfa` turns an :class:`ActionSchema` into a minimal DFA over UTF-8 *bytes* that accepts
a safe, canonical subset of what ``parse_action`` accepts::

    name()  |  name(arg)  |  name(arg, arg, ...)      # one space after each comma, nothing else
    str  : "..." with printable ASCII or any non-ASCII byte; escapes \\" \\\\ \\n \\t only
    key  : "<a name from KEYS, lower case>"
    int  : -?[0-9]{1,9}          num : int(.[0-9]{1,9})?       ref : #[0-9]{1,9}
    bool : true | false          value : str | num | bool

Overloads and the variadic last parameter (up to ``Signature.max_args`` arguments) are respected.
:func:`build_token_grammar` lifts the DFA to a token table ``table[state, token] -> state`` (a dead
state rejects) for a vocabulary given as the bytes of each token id, with an accepting mask for
the end token and, per state, the minimum number of tokens still needed to finish. Inside jit,
:func:`allowed_tokens` gives the tokens allowed from each sequence's state *and* within its remaining
token budget, so a constrained sample always closes before ``max_new_tokens``; :func:`advance` steps
the state. Strings are unbounded in the DFA; ``max_new_tokens`` times the longest token must stay
under ``MAX_ACTION_CHARS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from env_server.actions import KEYS, ActionSchema, ArgKind, Signature

N_SYMBOLS = 256  # the DFA reads UTF-8 bytes
MAX_DIGITS = 9  # |n| <= 999,999,999 < the parser's 10**9 bound

_PRINTABLE = frozenset(range(0x20, 0x7F))
# Inside strings any non-ASCII byte is fine: even a broken UTF-8 sequence decodes (lossily) to
# non-ASCII characters, which can neither close the string nor add a line break.
_STR_CHARS = frozenset(_PRINTABLE - {ord('"'), ord("\\")}) | frozenset(range(0x80, 0x100))
_ESCAPABLE = frozenset(b'nt"\\')
_DIGITS = frozenset(b"0123456789")


def _as_bytes(text: str | bytes) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else text


# ------------------------------------------------------------------------ regex AST -> NFA
# A tiny regex AST over bytes:
# ("set", frozenset[int]) | ("seq", [..]) | ("alt", [..]) | ("star", x) | ("opt", x)
Node = tuple


def _lit(s: str) -> Node:
    return ("seq", [("set", frozenset({b})) for b in s.encode("utf-8")])


def _seq(*xs: Node) -> Node:
    return ("seq", list(xs))


def _alt(*xs: Node) -> Node:
    return ("alt", list(xs))


def _upto(x: Node, n: int) -> Node:
    """``x{0,n}`` as nested optionals (keeps the NFA unambiguous)."""
    out: Node = ("seq", [])
    for _ in range(n):
        out = ("opt", _seq(x, out))
    return out


def _rep(x: Node, lo: int, hi: int) -> Node:
    return _seq(*([x] * lo), _upto(x, hi - lo))


def _arg(kind: ArgKind) -> Node:
    digits = _rep(("set", _DIGITS), 1, MAX_DIGITS)
    integer = _seq(("opt", _lit("-")), digits)
    number = _seq(integer, ("opt", _seq(_lit("."), digits)))
    string = _seq(_lit('"'), ("star", _alt(("set", _STR_CHARS), _seq(_lit("\\"), ("set", _ESCAPABLE)))), _lit('"'))
    boolean = _alt(_lit("true"), _lit("false"))
    table: dict[str, Node] = {
        "str": string,
        "int": integer,
        "num": number,
        "ref": _seq(_lit("#"), digits),
        "bool": boolean,
        "value": _alt(string, number, boolean),
        "key": _seq(_lit('"'), _alt(*(_lit(k) for k in sorted(KEYS))), _lit('"')),
    }
    return table[kind]


def _signature(sig: Signature) -> Node:
    if not sig.params:
        return ("seq", [])
    parts = [_arg(sig.params[0].kind)]
    parts += [_seq(_lit(", "), _arg(p.kind)) for p in sig.params[1:]]
    if sig.variadic:
        parts.append(_upto(_seq(_lit(", "), _arg(sig.params[-1].kind)), sig.max_args - len(sig.params)))
    return _seq(*parts)


def schema_regex(schema: ActionSchema) -> Node:
    """The regex AST of every action line in ``schema`` (canonical subset)."""
    return _alt(*(
        _seq(_lit(name), _lit("("), _alt(*(_signature(s) for s in adef.signatures)), _lit(")"))
        for name, adef in sorted(schema.actions.items())
    ))


class _NFA:
    def __init__(self) -> None:
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[frozenset[int], int]]] = []

    def state(self) -> int:
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def build(self, node: Node) -> tuple[int, int]:
        kind = node[0]
        start, end = self.state(), self.state()
        if kind == "set":
            self.edges[start].append((node[1], end))
        elif kind == "seq":
            cur = start
            for child in node[1]:
                s, e = self.build(child)
                self.eps[cur].append(s)
                cur = e
            self.eps[cur].append(end)
        elif kind == "alt":
            for child in node[1]:
                s, e = self.build(child)
                self.eps[start].append(s)
                self.eps[e].append(end)
        elif kind in ("star", "opt"):
            s, e = self.build(node[1])
            self.eps[start] += [s, end]
            self.eps[e].append(end)
            if kind == "star":
                self.eps[e].append(s)
        else:
            raise ValueError(f"bad regex node {kind!r}")
        return start, end

    def closure(self, states: set[int]) -> frozenset[int]:
        stack, seen = list(states), set(states)
        while stack:
            for t in self.eps[stack.pop()]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        return frozenset(seen)


# ------------------------------------------------------------------------------ char DFA
@dataclass(frozen=True)
class CharDFA:
    """``table[state, byte] -> state`` with an explicit absorbing dead state ``dead`` (last row)."""

    table: np.ndarray  # [S + 1, N_SYMBOLS] int32
    accept: np.ndarray  # [S + 1] bool
    start: int

    @property
    def dead(self) -> int:
        return self.table.shape[0] - 1

    @property
    def num_states(self) -> int:
        return self.table.shape[0] - 1

    def run(self, text: str | bytes, state: int | None = None) -> int:
        s = self.start if state is None else state
        for b in _as_bytes(text):
            s = int(self.table[s, b])
        return s

    def accepts(self, text: str | bytes) -> bool:
        return bool(self.accept[self.run(text)])


def _determinize(node: Node) -> tuple[np.ndarray, np.ndarray]:
    nfa = _NFA()
    start, final = nfa.build(node)
    first = nfa.closure({start})
    index: dict[frozenset[int], int] = {first: 0}
    order = [first]
    rows: list[list[int]] = []
    i = 0
    while i < len(order):
        moves: dict[int, set[int]] = {}
        for s in order[i]:
            for syms, t in nfa.edges[s]:
                for c in syms:
                    moves.setdefault(c, set()).add(t)
        row = [-1] * N_SYMBOLS
        for c, targets in moves.items():
            nxt = nfa.closure(targets)
            if nxt not in index:
                index[nxt] = len(order)
                order.append(nxt)
            row[c] = index[nxt]
        rows.append(row)
        i += 1
    n = len(order)
    table = np.asarray(rows, np.int32)
    table = np.vstack([np.where(table < 0, n, table), np.full((1, N_SYMBOLS), n, np.int32)])
    accept = np.array([final in st for st in order] + [False])
    return table, accept


def _minimize(table: np.ndarray, accept: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Moore partition refinement; the dead state ends up last again."""
    cls = accept.astype(np.int64)
    n_cls = len(np.unique(cls))
    while True:
        sig = np.concatenate([cls[:, None], cls[table]], axis=1)
        _, new = np.unique(sig, axis=0, return_inverse=True)
        new = new.reshape(-1)
        n_new = int(new.max()) + 1
        cls = new
        if n_new == n_cls:
            break
        n_cls = n_new
    dead_cls = cls[-1]
    # renumber: dead class last, others in order of first appearance
    order = [c for c in dict.fromkeys(cls.tolist()) if c != dead_cls] + [dead_cls]
    remap = np.empty(n_cls, np.int32)
    remap[order] = np.arange(n_cls, dtype=np.int32)
    rep = np.zeros(n_cls, np.int64)
    rep[cls[::-1]] = np.arange(len(cls))[::-1]  # one representative state per class
    new_table = remap[cls[table[rep[order]]]]
    new_accept = accept[rep[order]]
    return new_table.astype(np.int32), new_accept, int(remap[cls[start]])


def build_char_dfa(schema: ActionSchema) -> CharDFA:
    """The minimal character DFA of ``schema``'s canonical action lines."""
    table, accept = _determinize(schema_regex(schema))
    table, accept, start = _minimize(table, accept, 0)
    return CharDFA(table=table, accept=accept, start=start)


# ----------------------------------------------------------------------------- token level
@flax.struct.dataclass
class TokenGrammar:
    """Token-level automaton, a pytree usable inside jit.

    ``table[state, token]`` is the next state (``dead`` = last row rejects), ``accept[state]`` says
    whether the end token may follow, ``dist[state]`` is the fewest tokens (end token included) that
    complete an action from ``state``.
    """

    table: jax.Array  # [S + 1, V] int16 or int32
    accept: jax.Array  # [S + 1] bool
    dist: jax.Array  # [S + 1] int32
    start: int = flax.struct.field(pytree_node=False)
    end_id: int = flax.struct.field(pytree_node=False)

    @property
    def dead(self) -> int:
        return self.table.shape[0] - 1

    @property
    def min_tokens(self) -> int:
        """Fewest tokens (end included) of any action: ``max_new_tokens`` must be at least this."""
        return int(self.dist[self.start])

    def initial_state(self, batch: int) -> jax.Array:
        return jnp.full((batch,), self.start, jnp.int32)


_UNREACHABLE = 1 << 20


def _lift(dfa: CharDFA, token_bytes: Sequence[bytes | None], vocab_size: int, chunk: int) -> np.ndarray:
    n_states = dfa.table.shape[0]
    out = np.full((n_states, vocab_size), dfa.dead, np.int32)
    by_len: dict[int, list[int]] = {}
    for tid, s in enumerate(token_bytes[:vocab_size]):
        if s:
            by_len.setdefault(len(s), []).append(tid)
    states = np.arange(n_states, dtype=np.int32)[:, None]
    for length, ids in by_len.items():
        for lo in range(0, len(ids), chunk):
            part = ids[lo : lo + chunk]
            syms = np.array([list(token_bytes[t]) for t in part], np.int32)
            cur = np.broadcast_to(states, (n_states, len(part)))
            for j in range(length):
                cur = dfa.table[cur, syms[None, :, j]]
            out[:, part] = cur
    return out


def _distances(table: np.ndarray, accept: np.ndarray, dead: int) -> np.ndarray:
    dist = np.where(accept, 1, _UNREACHABLE).astype(np.int64)
    dist[dead] = _UNREACHABLE
    while True:
        via = 1 + dist[table].min(axis=1)
        new = np.minimum(dist, via)
        new[dead] = _UNREACHABLE
        if np.array_equal(new, dist):
            return np.minimum(dist, _UNREACHABLE).astype(np.int32)
        dist = new


def build_token_grammar(
    dfa: CharDFA,
    token_bytes: Sequence[bytes | str | None],
    end_id: int,
    vocab_size: int | None = None,
    chunk: int = 4096,
) -> TokenGrammar:
    """Lift ``dfa`` to tokens. ``token_bytes[i]`` is what token i contributes to the decoded byte
    stream (see ``Tokenizer.token_bytes``; str is UTF-8 encoded; None or empty = never allowed, e.g.
    special tokens). ``vocab_size`` may exceed the list (padded model vocab: extra ids are never
    allowed). ``end_id`` is allowed only in accepting states."""
    vocab_size = vocab_size or len(token_bytes)
    pieces = [None if (i == end_id or not s) else _as_bytes(s) for i, s in enumerate(token_bytes)]
    table = _lift(dfa, pieces, vocab_size, chunk)
    dist = _distances(table, dfa.accept, dfa.dead)
    dtype = np.int16 if table.shape[0] <= np.iinfo(np.int16).max else np.int32
    return TokenGrammar(
        table=jnp.asarray(table.astype(dtype)),
        accept=jnp.asarray(dfa.accept),
        dist=jnp.asarray(dist),
        start=dfa.start,
        end_id=end_id,
    )


def build_action_grammar(
    schema: ActionSchema, token_bytes: Sequence[bytes | str | None], end_id: int, vocab_size: int | None = None
) -> TokenGrammar:
    """Schema -> byte DFA -> token grammar in one call."""
    return build_token_grammar(build_char_dfa(schema), token_bytes, end_id, vocab_size)


# ------------------------------------------------------------------------------ jit side
def allowed_tokens(g: TokenGrammar, state: jax.Array, remaining: jax.Array | int) -> jax.Array:
    """``[B, V]`` bool: tokens that keep each sequence on the grammar and let it finish within
    ``remaining`` tokens (this one included). The end token is allowed exactly in accepting states."""
    remaining = jnp.broadcast_to(jnp.asarray(remaining, jnp.int32), state.shape)
    nxt = g.table[state].astype(jnp.int32)
    ok = (nxt != g.dead) & (g.dist[nxt] <= remaining[:, None] - 1)
    ok = ok.at[:, g.end_id].set(g.accept[state])
    # never leave a row without a choice (only reachable if the budget was already too small)
    return ok.at[:, g.end_id].set(ok[:, g.end_id] | ~ok.any(axis=-1))


def advance(g: TokenGrammar, state: jax.Array, token: jax.Array) -> jax.Array:
    """Next state of each sequence after ``token[B]``."""
    return g.table[state, token].astype(jnp.int32)
