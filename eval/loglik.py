"""Batched log-likelihood scoring of continuations, lm-evaluation-harness style, on the mesh.

For each request (a context and several continuations) the scorer returns, per continuation, the
sum over its tokens of ``log p(token | context, earlier continuation tokens)``.

How it is computed (prefix reuse by *tree packing*): a request becomes one *packet*
``[context | cont_1 | cont_2 | ... ]`` in which every continuation attends to the shared context and
causally to itself, never to the other continuations, and takes positions right after the context.
So the context is computed once for all options and nothing is padded per option. Packets are
bin-packed (first-fit decreasing) into rows of one length ``L``, chosen by a FLOP model among a few
sizes, and rows go to the model in batches of a fixed row count sharded over the ``batch``
mesh axes. Only the continuation positions are projected to the vocabulary (compacted to ``Tn``
targets per row, a power of two), so one run compiles one shape ``(rows, L, Tn)``.
``reuse_prefix=False`` packs ``[context | cont]`` per option instead (the naive baseline).

Counters: ``real`` = non-padding token slots computed, ``computed`` = all slots (rows x L),
``unique`` = context once + continuations, ``naive`` = sum over options of (context + continuation).
"""

from __future__ import annotations

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

ROW_LENGTHS: tuple[int, ...] = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
# The masked softmax over the [L, L] scores is memory-bound: on this CPU one score element cost about
# as much as 1000 matmul FLOPs (the "small" preset: ~49/80/125/344 us per token at L=256/512/1024/2048),
# so the row-length choice counts it at that weight. Lower it on accelerators.
SCORE_ELEMENT_COST = 1000.0


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
    row_length: int = 0
    target_width: int = 0
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


def _pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing bin packing of item ``lengths`` into rows of ``capacity`` -> item ids per row."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        for r, f in enumerate(free):
            if f >= n:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(capacity - n)
    return rows


def _pow2_at_least(n: int, lo: int = 16) -> int:
    return max(lo, 1 << max(0, int(n - 1).bit_length()))


class LoglikScorer:
    """Score continuations with a :class:`~jaxrl_desktop.models.Decoder` on a mesh.

    Args:
      model: the decoder (its parameters are placed with the logical-axis rules on ``mesh``).
      mesh: defaults to all devices on the ``data`` axis.
      rows_per_batch: rows per forward call (rounded up to a multiple of the batch shards).
      max_positions: longest context + continuation the model may see (default ``cfg.max_seq_len``);
        longer contexts are truncated from the left and counted in ``stats.truncated``.
      row_lengths: candidate row lengths ``L``; the cheapest one (FLOP model) that fits is used.
      reuse_prefix: tree-pack all options of a request after one context (else one packet per option).
      score_element_cost: FLOP-equivalent cost of one attention-score element (mask, softmax...) in
        the row-length cost model; see :data:`SCORE_ELEMENT_COST`.
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
    ):
        self.score_element_cost = score_element_cost
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
    def _prepare(
        self, requests: Sequence[Request], stats: ScoreStats
    ) -> tuple[list[tuple[list[int], list[tuple[int, list[int]]]]], list[int]]:
        """Validate, truncate contexts to ``max_positions`` and number the continuations:
        per request ``(context, [(continuation id, tokens)])``, plus the id offsets."""
        prepared = []
        offsets = [0]
        limit = min(self.max_positions, self.row_lengths[-1])
        for r, req in enumerate(requests):
            if not req.continuations:
                raise ValueError(f"request {r} has no continuations")
            if any(len(c) == 0 for c in req.continuations):
                raise ValueError(f"request {r} has an empty continuation")
            if not req.context:
                raise ValueError(f"request {r} has an empty context (start it with BOS/EOS)")
            longest = max(len(c) for c in req.continuations)
            if longest + 1 > limit:
                raise ValueError(
                    f"request {r}: a continuation of {longest} tokens leaves no room for context "
                    f"within {limit} tokens (max_positions / longest row)"
                )
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

    def layout(self, requests: Sequence[Request]) -> tuple[int, list[list[_Packet]], list[int], ScoreStats]:
        """Choose the row length and bin-pack: (L, rows of packets, continuation offsets, stats)."""
        stats = ScoreStats()
        prepared, offsets = self._prepare(requests, stats)
        need = max(len(ctx) + max(len(c) for _, c in conts) for ctx, conts in prepared)
        best: tuple[float, int, list[list[_Packet]]] | None = None
        for length in self.row_lengths:
            if length < need:
                continue
            packets = self._packets(prepared, length)
            rows = _pack([p.length for p in packets], length)
            cost = self._cost(length, len(rows))
            if best is None or cost < best[0]:
                best = (cost, length, [[packets[i] for i in row] for row in rows])
        assert best is not None
        _, length, packed = best
        stats.row_length = length
        stats.rows = len(packed)
        most = max(sum(len(c) for p in row for _, c in p.conts) for row in packed)
        stats.target_width = min(_pow2_at_least(most), _pow2_at_least(length))  # one shape per run
        return length, packed, offsets, stats

    def _batch_arrays(
        self, rows: list[list[_Packet]], length: int, tn: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
        b = self.rows_per_batch
        tokens = np.zeros((b, length), np.int32)
        positions = np.zeros((b, length), np.int32)
        segments = np.zeros((b, length), np.int32)
        branches = np.zeros((b, length), np.int32)
        targets: list[list[tuple[int, int, int]]] = []  # per row: (source slot, token, cont id)
        real = 0
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
            real += t
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
        return batch, tgt_cont, real

    # ------------------------------------------------------------------------------ score
    def warmup(self, requests: Sequence[Request]) -> ScoreStats:
        """Compile the shape that ``score(requests)`` will use (one all-padding batch)."""
        length, _, _, stats = self.layout(requests)
        batch, _, _ = self._batch_arrays([], length, stats.target_width)
        with jax.set_mesh(self.mesh):
            jax.block_until_ready(self._jitted()(self.params, jax.device_put(batch, batch_sharding(self.mesh, 2))))
        return stats

    def score(
        self, requests: Sequence[Request], progress: bool | Any = False, desc: str = "scoring"
    ) -> tuple[list[np.ndarray], ScoreStats]:
        """Per request, ``float64[n_continuations]`` summed log-probs; plus the token counters."""
        if not requests:
            return [], ScoreStats()
        length, rows, offsets, stats = self.layout(requests)
        sums = np.zeros(offsets[-1], np.float64)
        remaining = np.zeros(len(requests), np.int64)
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

        with jax.set_mesh(self.mesh):
            for start in range(0, len(rows), self.rows_per_batch):
                chunk = rows[start : start + self.rows_per_batch]
                batch, tgt_cont, real = self._batch_arrays(chunk, length, stats.target_width)
                stats.real_tokens += real
                stats.computed_tokens += batch["tokens"].size
                stats.target_slots += batch["tgt_tok"].size
                stats.calls += 1
                stats.shapes.add((self.rows_per_batch, length, batch["tgt_tok"].shape[1]))
                placed = jax.device_put(batch, batch_sharding(self.mesh, 2))
                out = fn(self.params, placed)  # async dispatch: prepare the next batch meanwhile
                if pending is not None:
                    collect(pending)
                pending = (out, tgt_cont, chunk)
            if pending is not None:
                collect(pending)
        if own:
            bar.close()
        return [sums[offsets[r] : offsets[r + 1]].copy() for r in range(len(requests))], stats
