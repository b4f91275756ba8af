"""Batched log-likelihood scoring of continuations, lm-evaluation-harness style, on the mesh.

For each request (a context and several continuations) the scorer returns, per continuation, the
sum over its tokens of ``log p(token | context, earlier continuation tokens)``.

How it is computed (prefix reuse by *tree packing*): a request becomes one *packet*
``[context | cont_1 | cont_2 | ... ]`` in which every continuation attends to the shared context and
causally to itself, never to the other continuations, and takes positions right after the context.
So the context is computed once for all options and nothing is padded per option. Packets are
bin-packed (best-fit decreasing) into rows whose lengths come from a few *length buckets*: a FLOP
model picks the bucket set (at most ``max_shapes`` lengths from ``row_lengths``; a bucket is only
added when it saves at least ``min_shape_gain`` of the cost, since every shape is one compile), and
each row is shrunk to the shortest bucket that holds it, so long packets that cannot share a row
do not drag every row to the longest length. Rows go to the model in batches of a fixed row count
sharded over the ``batch`` mesh axes. Only the continuation positions are projected to the
vocabulary (compacted to ``Tn`` targets per row, a power of two), so a run compiles one shape
``(rows, L, Tn)`` per bucket. ``reuse_prefix=False`` packs ``[context | cont]`` per option instead
(the naive baseline).

Counters: ``real`` = non-padding token slots computed, ``computed`` = all slots (rows x L, padding
rows of a batch included), ``unique`` = context once + continuations, ``naive`` = sum over options
of (context + continuation). The layout (and so ``real`` / ``computed``) depends only on token
counts: :meth:`LoglikScorer.plan` gives the counters without running the model.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxrl_desktop.mesh import LOGICAL_AXIS_RULES, make_mesh
from jaxrl_desktop.models.decoder import Decoder, log_probs_from_logits
from jaxrl_desktop.sharding import batch_sharding, constrain, param_shardings

# Candidate row lengths: steps of 64 up to 1024, then 128, 256, 512 (each at most ~1/8 of the length,
# so shrinking a row to the shortest bucket that holds it leaves little padding).
ROW_LENGTHS: tuple[int, ...] = (
    *range(64, 1025, 64), *range(1152, 2049, 128), *range(2304, 4097, 256), *range(4608, 8193, 512)
)
# The masked softmax over the [L, L] scores is memory-bound: on this CPU one score element cost about
# as much as 1000 matmul FLOPs (the "small" preset: ~49/80/125/344 us per token at L=256/512/1024/2048),
# so the row-length choice counts it at that weight. Lower it on accelerators.
SCORE_ELEMENT_COST = 1000.0
MAX_SHAPES = 4  # length buckets (compiled shapes) per run
MIN_SHAPE_GAIN = 0.02  # a further bucket must cut the modelled cost by at least this fraction


class OverlongError(ValueError):
    """A continuation alone does not fit the position limit (no context token would be left)."""

    def __init__(self, request: int, length: int, limit: int):
        self.request, self.length, self.limit = request, length, limit
        super().__init__(
            f"request {request}: a continuation of {length} tokens leaves no room for context "
            f"within {limit} tokens (max_positions / longest row)"
        )


@dataclasses.dataclass
class Request:
    """A context and the continuations to score after it (token ids; each continuation non-empty)."""

    context: list[int]
    continuations: list[list[int]]


@dataclasses.dataclass
class ScoreStats:
    real_tokens: int = 0
    computed_tokens: int = 0
    unique_tokens: int = 0
    naive_tokens: int = 0
    target_slots: int = 0
    target_tokens: int = 0
    rows: int = 0
    calls: int = 0
    truncated: int = 0
    row_length: int = 0  # the longest row length used
    target_width: int = 0  # the widest target width used
    row_counts: dict[int, int] = dataclasses.field(default_factory=dict)  # row length -> rows
    modelled_cost: float = 0.0  # the layout's cost in the FLOP model (FLOP-equivalents)
    shapes: set[tuple[int, int, int]] = dataclasses.field(default_factory=set)

    @property
    def efficiency(self) -> float:
        """Real tokens / computed tokens (padding overhead; goal >= 0.85)."""
        return self.real_tokens / max(self.computed_tokens, 1)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shapes"] = sorted(self.shapes)
        d["efficiency"] = self.efficiency
        d["prefix_saving"] = self.naive_tokens / max(self.real_tokens, 1)
        return d


# ------------------------------------------------------------------------------ tokenising
def encode_requests(
    tokenizer: Any, contexts: Sequence[str], continuations: Sequence[Sequence[str]], add_bos: bool = False
) -> list[Request]:
    """Tokenise like lm-eval: trailing spaces of a context move to its continuations, and a
    continuation's tokens are what ``encode(context + cont)`` adds after ``encode(context)`` (or
    ``encode(cont)`` alone if that is not a prefix). To avoid re-encoding long few-shot contexts once
    per option, the difference is taken after the context's last line only (tokenizers do not merge
    across a newline). An empty context becomes BOS (or EOS); ``add_bos`` always prepends BOS."""
    stripped = [c.rstrip(" ") for c in contexts]
    conts = [[ctx[len(s) :] + c for c in cs] for ctx, s, cs in zip(contexts, stripped, continuations, strict=True)]
    anchors = [s[s.rfind("\n") + 1 :] for s in stripped]
    ctx_ids = tokenizer.encode_batch(stripped)
    anchor_ids = tokenizer.encode_batch(anchors)
    wholes = iter(tokenizer.encode_batch([a + c for a, cs in zip(anchors, conts, strict=True) for c in cs]))
    start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    out = []
    for ctx, anchor, cs in zip(ctx_ids, anchor_ids, conts, strict=True):
        ids_list = []
        for c in cs:
            whole = next(wholes)
            ids = list(whole[len(anchor) :]) if whole[: len(anchor)] == anchor else tokenizer.encode(c)
            if not ids:
                raise ValueError(f"continuation {c!r} encodes to no tokens")
            ids_list.append(ids)
        ctx = list(ctx)
        if add_bos or not ctx:
            ctx = [start, *ctx]
        out.append(Request(ctx, ids_list))
    return out


def encode_request(tokenizer: Any, context: str, continuations: Sequence[str], add_bos: bool = False) -> Request:
    """One request; see :func:`encode_requests`."""
    return encode_requests(tokenizer, [context], [continuations], add_bos)[0]


# --------------------------------------------------------------------------- tree forward
def tree_mask(segments: jax.Array, branches: jax.Array) -> jax.Array:
    """``[B, L, L]`` attention mask: causal, within the packet (segment id, 0 = padding), and a
    continuation (branch > 0) sees only the context (branch 0) and its own branch."""
    t = jnp.arange(segments.shape[1])
    causal = t[None, :, None] >= t[None, None, :]
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] != 0)
    visible = (branches[:, None, :] == 0) | (branches[:, None, :] == branches[:, :, None])
    return causal & same & visible


def tree_hidden(model: Decoder, tokens: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    """Final normed hidden states of ``model`` under an explicit ``[B, L, L]`` mask (its own blocks)."""
    table = constrain(model.embed[...], ("vocab", None))
    x = constrain(jnp.take(table, tokens, axis=0).astype(model.cfg.compute_dtype), ("batch", "length", None))
    for block in model.layers:
        x, _ = block(x, positions, mask)
    return model.final_norm(x)


def _score_rows(model: Decoder, batch: dict[str, jax.Array]) -> jax.Array:
    mask = tree_mask(batch["segments"], batch["branches"])
    h = tree_hidden(model, batch["tokens"], batch["positions"], mask)
    hs = jnp.take_along_axis(h, batch["tgt_src"][..., None], axis=1)  # [B, Tn, D]
    lp = log_probs_from_logits(model.logits(hs), batch["tgt_tok"])
    return jnp.where(batch["tgt_valid"], lp, 0.0)


# ------------------------------------------------------------------------------- packing
@dataclasses.dataclass
class _Packet:
    request: int
    context: list[int]
    conts: list[tuple[int, list[int]]]  # (global continuation id, tokens)

    @property
    def length(self) -> int:
        return len(self.context) + sum(len(c) for _, c in self.conts)


def _pack(
    lengths: Sequence[int], capacity: int | Callable[[int], int], order: Sequence[int] | None = None
) -> tuple[list[list[int]], list[int]]:
    """Best-fit decreasing bin packing of item ``lengths`` -> (item ids per row, slots used per row).
    Each item goes into the open row with the least free space that holds it; a new row gets
    ``capacity`` slots, or ``capacity(length of its first item)`` when ``capacity`` is a function.
    ``order``: the item ids by decreasing length, if already known."""
    cap_of = capacity if callable(capacity) else (lambda n: capacity)
    if order is None:
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    used: list[int] = []
    free: list[tuple[int, int]] = []  # sorted (free slots, row id)
    smallest = min(lengths, default=0)
    for i in order:
        n = lengths[i]
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            f, r = free.pop(j)
            rows[r].append(i)
            used[r] += n
        else:
            f, r = cap_of(n), len(rows)
            rows.append([i])
            used.append(n)
        if f - n >= smallest:  # a row that can take no further item leaves the search
            bisect.insort(free, (f - n, r))
    return rows, used


def _pow2_at_least(n: int, lo: int = 16) -> int:
    return max(lo, 1 << max(0, int(n - 1).bit_length()))


@dataclasses.dataclass
class _Plan:
    cost: float
    lengths: tuple[int, ...]  # the bucket set
    groups: dict[int, list[list[int]]]  # row length -> rows of packet ids (packets cut for lengths[-1])


class LoglikScorer:
    """Score continuations with a :class:`~jaxrl_desktop.models.Decoder` on a mesh.

    Args:
      model: the decoder (its parameters are placed with the logical-axis rules on ``mesh``).
      mesh: defaults to all devices on the ``data`` axis.
      rows_per_batch: rows per forward call (rounded up to a multiple of the batch shards).
      max_positions: longest context + continuation the model may see (default ``cfg.max_seq_len``);
        longer contexts are truncated from the left and counted in ``stats.truncated``.
      row_lengths: candidate row lengths ``L``; the cheapest set of at most ``max_shapes`` of them
        (FLOP model) is used, each row shrunk to the shortest length of the set that holds it.
      reuse_prefix: tree-pack all options of a request after one context (else one packet per option).
      score_element_cost: FLOP-equivalent cost of one attention-score element (mask, softmax...) in
        the row-length cost model; see :data:`SCORE_ELEMENT_COST`.
      max_shapes: most row lengths (compiled shapes) per run; 1 = one length for every row.
      min_shape_gain: a further row length is used only if it cuts the modelled cost by this fraction.
    """

    def __init__(
        self,
        model: Decoder,
        mesh: Mesh | None = None,
        *,
        rows_per_batch: int = 8,
        max_positions: int | None = None,
        row_lengths: Sequence[int] = ROW_LENGTHS,
        reuse_prefix: bool = True,
        rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
        score_element_cost: float = SCORE_ELEMENT_COST,
        max_shapes: int = MAX_SHAPES,
        min_shape_gain: float = MIN_SHAPE_GAIN,
    ):
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
        self.score_element_cost = score_element_cost
        self.max_shapes = int(max_shapes)
        self.min_shape_gain = float(min_shape_gain)
        self._layout_cache: tuple[tuple, Any] | None = None
        self.mesh = mesh if mesh is not None else make_mesh(data=-1, fsdp=1, tensor=1)
        self.cfg = model.cfg
        self.max_positions = int(max_positions or model.cfg.max_seq_len)
        self.row_lengths = tuple(sorted(row_lengths))
        self.reuse_prefix = reuse_prefix
        shards = self.mesh.shape.get("data", 1) * self.mesh.shape.get("fsdp", 1)
        self.rows_per_batch = -(-max(rows_per_batch, 1) // shards) * shards
        graphdef, params = nnx.split(model)
        self._shardings = param_shardings(params, self.mesh, rules)
        self.params = jax.device_put(params, self._shardings)
        self._graphdef = graphdef
        self._fn: Callable[..., jax.Array] | None = None

    # ---------------------------------------------------------------------------- compile
    def _jitted(self) -> Callable[..., jax.Array]:
        if self._fn is None:
            graphdef = self._graphdef
            data = batch_sharding(self.mesh, 2)

            def fn(params: nnx.State, batch: dict[str, jax.Array]) -> jax.Array:
                return _score_rows(nnx.merge(graphdef, params), batch)

            self._fn = jax.jit(fn, in_shardings=(self._shardings, data), out_shardings=data)
        return self._fn

    # ----------------------------------------------------------------------------- layout
    @property
    def limit(self) -> int:
        """The longest context + continuation a packet may hold (positions are per packet)."""
        return min(self.max_positions, self.row_lengths[-1])

    def _prepare(
        self, requests: Sequence[Request], stats: ScoreStats
    ) -> tuple[list[tuple[list[int], list[tuple[int, list[int]]]]], list[int]]:
        """Validate, truncate contexts to ``max_positions`` and number the continuations:
        per request ``(context, [(continuation id, tokens)])``, plus the id offsets."""
        prepared = []
        offsets = [0]
        limit = self.limit
        for r, req in enumerate(requests):
            if not req.continuations:
                raise ValueError(f"request {r} has no continuations")
            if any(len(c) == 0 for c in req.continuations):
                raise ValueError(f"request {r} has an empty continuation")
            if not req.context:
                raise ValueError(f"request {r} has an empty context (start it with BOS/EOS)")
            longest = max(len(c) for c in req.continuations)
            if longest + 1 > limit:
                raise OverlongError(r, longest, limit)
            ctx = req.context
            if len(ctx) + longest > limit:
                ctx = ctx[len(ctx) + longest - limit :]
                stats.truncated += 1
            ids = range(offsets[-1], offsets[-1] + len(req.continuations))
            offsets.append(offsets[-1] + len(ids))
            stats.unique_tokens += len(req.context) + sum(map(len, req.continuations))
            stats.naive_tokens += sum(len(req.context) + len(c) for c in req.continuations)
            stats.target_tokens += sum(map(len, req.continuations))
            prepared.append((ctx, list(zip(ids, req.continuations, strict=True))))
        return prepared, offsets

    def _packets(self, prepared: list[tuple[list[int], list[tuple[int, list[int]]]]], cap: int) -> list[_Packet]:
        """Packets of at most ``cap`` tokens: all options after one context, split over several
        packets (the context repeated) only where they do not fit; one per option without reuse."""
        packets: list[_Packet] = []
        for r, (ctx, conts) in enumerate(prepared):
            if not self.reuse_prefix:
                packets += [_Packet(r, ctx, [c]) for c in conts]
                continue
            group: list[tuple[int, list[int]]] = []
            used = len(ctx)
            for c in conts:
                if group and used + len(c[1]) > cap:
                    packets.append(_Packet(r, ctx, group))
                    group, used = [], len(ctx)
                group.append(c)
                used += len(c[1])
            packets.append(_Packet(r, ctx, group))
        return packets

    def _cost(self, length: int, n_rows: int) -> float:
        """FLOPs of the forward over ``n_rows`` rows of ``length`` (rounded up to whole batches)."""
        c = self.cfg
        per_token = 2 * (
            c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
            + c.num_heads * c.head_dim * c.hidden_size
            + 3 * c.hidden_size * c.intermediate_size
        )
        attn = length * c.num_heads * (4 * c.head_dim + self.score_element_cost)
        rows = -(-n_rows // self.rows_per_batch) * self.rows_per_batch
        return rows * length * c.num_layers * (per_token + attn)

    def _plan(self, lengths: tuple[int, ...], packets: list[_Packet], order: list[int]) -> _Plan:
        """Pack ``packets`` (cut for the longest bucket; ``order`` = ids by decreasing length) for the
        bucket set ``lengths`` (ascending): two greedy packings are tried (every new row at the
        longest bucket, or at the shortest bucket that holds its first packet), rows shrunk to the
        shortest bucket that holds them; the cheaper one wins."""
        plens = [p.length for p in packets]
        capacities: list[Any] = [lengths[-1]]
        if len(lengths) > 1:
            capacities.append(lambda n: lengths[bisect.bisect_left(lengths, n)])
        best: _Plan | None = None
        for capacity in capacities:
            rows, used = _pack(plens, capacity, order)
            groups: dict[int, list[list[int]]] = {}
            for row, u in zip(rows, used, strict=True):
                groups.setdefault(lengths[bisect.bisect_left(lengths, u)], []).append(row)
            cost = sum(self._cost(length, len(g)) for length, g in groups.items())
            if best is None or cost < best.cost:
                best = _Plan(cost, lengths, groups)
        assert best is not None
        return best

    def _choose(self, prepared) -> tuple[_Plan, list[_Packet]]:
        """The cheapest bucket set found by local search (and the packets it packs): the best single
        row length that fits every packet; then, while under ``max_shapes``, add the row length that
        saves the most if it saves at least ``min_shape_gain``; then swap single lengths for others
        while that lowers the cost. Candidates: ``row_lengths`` from the shortest packet to twice the
        longest context + continuation."""
        need = max(len(ctx) + max(len(c) for _, c in conts) for ctx, conts in prepared)
        shortest = min(len(ctx) + min(len(c) for _, c in conts) for ctx, conts in prepared)
        usable = [n for n in self.row_lengths if n >= need]
        cands = [n for n in self.row_lengths if shortest <= n <= max(2 * need, usable[0])]
        packets: dict[int, tuple[list[_Packet], list[int]]] = {}
        seen: dict[tuple[int, ...], _Plan] = {}

        def plan(lengths: set[int]) -> _Plan:
            key = tuple(sorted(lengths))
            if key not in seen:
                if key[-1] not in packets:
                    ps = self._packets(prepared, key[-1])
                    packets[key[-1]] = (ps, sorted(range(len(ps)), key=lambda i: -ps[i].length))
                seen[key] = self._plan(key, *packets[key[-1]])
            return seen[key]

        best = min((plan({n}) for n in cands if n >= need), key=lambda p: p.cost)
        while len(best.lengths) < self.max_shapes:
            trial = min((plan({*best.lengths, n}) for n in cands if n not in best.lengths),
                        key=lambda p: p.cost, default=None)
            if trial is None or trial.cost > best.cost * (1.0 - self.min_shape_gain):
                break
            best = trial
        for _ in range(8):  # swap passes
            improved = False
            for old in best.lengths:
                rest = set(best.lengths) - {old}
                trial = min((plan({*rest, n}) for n in cands
                             if n not in best.lengths and max(rest | {n}) >= need),
                            key=lambda p: p.cost, default=None)
                if trial is not None and trial.cost < best.cost * (1.0 - 1e-3):
                    best, improved = trial, True
                    break
            if not improved:
                break
        return best, packets[best.lengths[-1]][0]

    def layout(
        self, requests: Sequence[Request]
    ) -> tuple[list[tuple[int, int, list[list[_Packet]]]], list[int], ScoreStats]:
        """Choose the row lengths and bin-pack: ``([(L, Tn, rows of packets)], continuation offsets,
        stats)``, the stats' token counters filled in as :meth:`score` will compute them."""
        key = (self.reuse_prefix, tuple((len(r.context), tuple(map(len, r.continuations))) for r in requests))
        if self._layout_cache is not None and self._layout_cache[0] == key:
            # the layout depends only on token counts: re-fill the cached one with these tokens
            cached, stats = self._layout_cache[1]
            prepared, offsets = self._prepare(requests, ScoreStats())
            tokens = {cid: cont for _, conts in prepared for cid, cont in conts}
            groups = [(length, tn, [[_Packet(p.request, prepared[p.request][0], [(c, tokens[c]) for c, _ in p.conts])
                                     for p in row] for row in rows]) for length, tn, rows in cached]
            return groups, offsets, dataclasses.replace(stats, shapes=set(stats.shapes),
                                                        row_counts=dict(stats.row_counts))
        stats = ScoreStats()
        prepared, offsets = self._prepare(requests, stats)
        plan, packets = self._choose(prepared)
        b = self.rows_per_batch
        stats.modelled_cost = plan.cost
        groups = []
        for length in sorted(plan.groups, reverse=True):
            rows = [[packets[i] for i in row] for row in plan.groups[length]]
            most = max(sum(len(c) for p in row for _, c in p.conts) for row in rows)
            tn = min(_pow2_at_least(most), _pow2_at_least(length))
            groups.append((length, tn, rows))
            calls = -(-len(rows) // b)
            stats.calls += calls
            stats.rows += len(rows)
            stats.row_counts[length] = len(rows)
            stats.real_tokens += sum(p.length for row in rows for p in row)
            stats.computed_tokens += calls * b * length
            stats.target_slots += calls * b * tn
            stats.shapes.add((b, length, tn))
            stats.row_length = max(stats.row_length, length)
            stats.target_width = max(stats.target_width, tn)
        self._layout_cache = (key, (groups, stats))
        return groups, offsets, dataclasses.replace(stats, shapes=set(stats.shapes), row_counts=dict(stats.row_counts))

    def plan(self, requests: Sequence[Request]) -> ScoreStats:
        """The token counters :meth:`score` would report, without running the model."""
        return self.layout(requests)[2] if requests else ScoreStats()

    def _batch_arrays(
        self, rows: list[list[_Packet]], length: int, tn: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        b = self.rows_per_batch
        tokens = np.zeros((b, length), np.int32)
        positions = np.zeros((b, length), np.int32)
        segments = np.zeros((b, length), np.int32)
        branches = np.zeros((b, length), np.int32)
        targets: list[list[tuple[int, int, int]]] = []  # per row: (source slot, token, cont id)
        for i, row in enumerate(rows):
            t = 0
            row_tg: list[tuple[int, int, int]] = []
            for s, p in enumerate(row, start=1):
                n = len(p.context)
                tokens[i, t : t + n] = p.context
                positions[i, t : t + n] = np.arange(n)
                segments[i, t : t + n] = s
                last_ctx = t + n - 1
                t += n
                for j, (cid, cont) in enumerate(p.conts, start=1):
                    m = len(cont)
                    tokens[i, t : t + m] = cont
                    positions[i, t : t + m] = np.arange(n, n + m)
                    segments[i, t : t + m] = s
                    branches[i, t : t + m] = j
                    src = [last_ctx, *range(t, t + m - 1)]
                    row_tg += [(src[k], cont[k], cid) for k in range(m)]
                    t += m
            targets.append(row_tg)
        tgt_src = np.zeros((b, tn), np.int32)
        tgt_tok = np.zeros((b, tn), np.int32)
        tgt_valid = np.zeros((b, tn), bool)
        tgt_cont = np.full((b, tn), -1, np.int64)
        for i, row_tg in enumerate(targets):
            if row_tg:
                a = np.asarray(row_tg, np.int64)
                k = len(a)
                tgt_src[i, :k], tgt_tok[i, :k], tgt_cont[i, :k] = a[:, 0], a[:, 1], a[:, 2]
                tgt_valid[i, :k] = True
        batch = dict(tokens=tokens, positions=positions, segments=segments, branches=branches,
                     tgt_src=tgt_src, tgt_tok=tgt_tok, tgt_valid=tgt_valid)
        return batch, tgt_cont

    # ------------------------------------------------------------------------------ score
    def warmup(self, requests: Sequence[Request]) -> ScoreStats:
        """Compile the shapes that ``score(requests)`` will use (one all-padding batch each)."""
        groups, _, stats = self.layout(requests)
        with jax.set_mesh(self.mesh):
            for length, tn, _ in groups:
                batch, _ = self._batch_arrays([], length, tn)
                placed = jax.device_put(batch, batch_sharding(self.mesh, 2))
                jax.block_until_ready(self._jitted()(self.params, placed))
        return stats

    def score(
        self, requests: Sequence[Request], progress: bool | Any = False, desc: str = "scoring"
    ) -> tuple[list[np.ndarray], ScoreStats]:
        """Per request, ``float64[n_continuations]`` summed log-probs; plus the token counters."""
        if not requests:
            return [], ScoreStats()
        groups, offsets, stats = self.layout(requests)
        sums = np.zeros(offsets[-1], np.float64)
        remaining = np.zeros(len(requests), np.int64)
        for _, _, rows in groups:
            for row in rows:
                for p in row:
                    remaining[p.request] += 1
        bar, own = (progress, False) if hasattr(progress, "update") else (None, bool(progress))
        if own:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(requests), desc=desc, unit="q")
        fn = self._jitted()
        pending: tuple[jax.Array, np.ndarray, list[list[_Packet]]] | None = None

        def collect(item: tuple[jax.Array, np.ndarray, list[list[_Packet]]]) -> None:
            out, tgt_cont, chunk = item
            lp = np.asarray(jax.device_get(out), np.float64)
            valid = tgt_cont >= 0
            np.add.at(sums, tgt_cont[valid], lp[valid])
            done = 0
            for row in chunk:
                for p in row:
                    remaining[p.request] -= 1
                    done += int(remaining[p.request] == 0)
            if bar is not None and done:
                bar.update(done)

        calls = 0
        with jax.set_mesh(self.mesh):
            for length, tn, rows in groups:
                for start in range(0, len(rows), self.rows_per_batch):
                    chunk = rows[start : start + self.rows_per_batch]
                    batch, tgt_cont = self._batch_arrays(chunk, length, tn)
                    placed = jax.device_put(batch, batch_sharding(self.mesh, 2))
                    out = fn(self.params, placed)  # async dispatch: prepare the next batch meanwhile
                    calls += 1
                    if pending is not None:
                        collect(pending)
                    pending = (out, tgt_cont, chunk)
            if pending is not None:
                collect(pending)
        if own:
            bar.close()
        assert calls == stats.calls, (calls, stats.calls)
        return [sums[offsets[r] : offsets[r + 1]].copy() for r in range(len(requests))], stats
