"""NetEval-style multiple-choice evaluation by log-likelihood (acc / acc_norm), zero- or k-shot.

    python -m eval.neteval --model config:small --data eval/data/neteval_sample.jsonl --shots 0
    python -m eval.neteval --model hf:/models/qwen2-0.5b \\
        --data ../shared/data/opseval_wired_network/test.json --format opseval --shots 5 --demos dense

Prints tables per sub-domain, language and answer type (count, acc, acc_norm with 95% bootstrap
intervals) and writes ``results.json``, ``results.md`` and ``results.png`` into ``--out``.
The library entry point is :func:`evaluate`; see ``docs/neteval.md``.

Inputs longer than the model's limit (``--max_positions``, default the model's ``max_seq_len``):
  * a k-shot prompt that does not fit loses whole demonstrations from the front (the least relevant;
    ``--nofit_demos``: cut tokens from the left instead); counted in the output;
  * a 0-shot prompt that still does not fit is cut from the left (counted as truncated);
  * an answer option that alone does not fit cannot be scored: by default the run stops before any
    work with a one-line error naming the question and the flags to change (exit code 2);
    ``--overlong=skip`` skips such questions instead, lists them in ``results.json`` ("skipped")
    and prints how many were skipped.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jax.sharding import Mesh

from eval import metrics, report
from eval.demos import DEMO_KINDS, make_selector
from eval.loglik import MAX_SHAPES, LoglikScorer, Request, encode_requests
from eval.mcq_data import FORMATS, MCQItem, load_mcq, sample_path, summarize
from eval.models import LoadedModel
from eval.prompts import (
    ANSWER_FORMATS,
    MULTI_MODES,
    Candidates,
    PromptConfig,
    build_prompt,
    candidates,
    delimiter,
)

OVERLONG_MODES: tuple[str, ...] = ("error", "skip")
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    shots: int = 0
    demos: str = "random"
    prompt: PromptConfig = dataclasses.field(default_factory=PromptConfig)
    seed: int = 0
    rows_per_batch: int = 8
    reuse_prefix: bool = True
    max_positions: int | None = None
    bootstrap: int = 1000
    max_groups: int = 12
    ranker_dir: str | None = None
    fit_demos: bool = True  # drop demonstrations (front first) until a prompt fits, instead of cutting tokens
    overlong: str = "error"  # a question with an option that alone exceeds the limit: "error" or "skip"
    max_shapes: int = MAX_SHAPES

    def __post_init__(self) -> None:
        if self.overlong not in OVERLONG_MODES:
            raise ValueError(f"overlong must be one of {OVERLONG_MODES}, got {self.overlong!r}")


class OverlongError(ValueError):
    """Questions with an answer option that alone does not fit the model's position limit."""

    def __init__(self, items: Sequence[tuple[int, MCQItem, int]], limit: int, total: int, model: str = ""):
        self.items, self.limit = list(items), limit
        index, first, n = self.items[0]
        longest = max(n for _, _, n in self.items)
        what = f" of {model}" if model else ""
        super().__init__(
            f"question {first.id!r} (#{index + 1} of {total}) has an answer option of {n} tokens, which leaves "
            f"no room for the prompt within the {limit}-token limit{what}; {len(self.items)} question(s) are "
            f"affected (longest option {longest} tokens). Raise --max_positions (--max_positions={longest + 64} "
            f"fits every option; beyond a model's trained context its scores degrade) or pass --overlong=skip "
            f"to skip and count them"
        )


def select_demos(
    items: Sequence[MCQItem], pool: Sequence[MCQItem], cfg: EvalConfig, mesh: Mesh | None = None,
    encoder: Any = None, progress: bool = False,
) -> tuple[list[list[int]], str]:
    """Pool indices of the demonstrations of every item (empty lists for zero-shot), and the
    description of the selector that really chose them (e.g. ``pistis(prerank fallback ...)``)."""
    if cfg.shots <= 0:
        return [[] for _ in items], "none (0-shot)"
    selector = make_selector(cfg.demos, pool, items, seed=cfg.seed, mesh=mesh, encoder=encoder,
                             ranker_dir=cfg.ranker_dir, progress=progress)
    description = getattr(selector, "description", cfg.demos)
    select_all = getattr(selector, "select_all", None)
    if select_all is not None:
        return select_all(cfg.shots), description
    return [selector.select(i, cfg.shots) for i in range(len(items))], description


def choose_demos(
    items: Sequence[MCQItem], pool: Sequence[MCQItem], cfg: EvalConfig, mesh: Mesh | None = None,
    encoder: Any = None, progress: bool = False,
) -> list[list[int]]:
    """Pool indices of the demonstrations of every item (see :func:`select_demos`)."""
    return select_demos(items, pool, cfg, mesh, encoder, progress)[0]


def build_requests(
    items: Sequence[MCQItem], pool: Sequence[MCQItem], demos: Sequence[Sequence[int]], cfg: EvalConfig,
    tokenizer: Any, add_bos: bool,
) -> tuple[list[Request], list[Candidates], list[str]]:
    """Prompts, their candidates and tokenised requests."""
    prompts = [build_prompt(item, [pool[i] for i in idx], cfg.prompt) for item, idx in zip(items, demos, strict=True)]
    cands = [candidates(item, cfg.prompt) for item in items]
    conts = [[delimiter(item) + t for t in c.texts] for item, c in zip(items, cands, strict=True)]
    return encode_requests(tokenizer, prompts, conts, add_bos=add_bos), cands, prompts


def sample_items(items: Sequence[MCQItem], n: int, seed: int = 0) -> list[MCQItem]:
    """A seeded random sample of ``n`` items with each language's share kept (largest remainder),
    in file order."""
    import numpy as np

    items = list(items)
    if n >= len(items):
        return items
    by_lang: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_lang.setdefault(it.language, []).append(i)
    langs = sorted(by_lang)
    exact = {lang: n * len(by_lang[lang]) / len(items) for lang in langs}
    counts = {lang: int(exact[lang]) for lang in langs}
    for lang in sorted(langs, key=lambda x: exact[x] - counts[x], reverse=True)[: n - sum(counts.values())]:
        counts[lang] += 1
    rng = np.random.default_rng(seed)
    picked = [int(i) for lang in langs for i in rng.choice(by_lang[lang], counts[lang], replace=False)]
    return [items[i] for i in sorted(picked)]


def _too_long(req: Request, limit: int) -> bool:
    return len(req.context) + max(map(len, req.continuations)) > limit


def fit_demos(
    items: Sequence[MCQItem], pool: Sequence[MCQItem], demos: Sequence[Sequence[int]], requests: Sequence[Request],
    prompts: Sequence[str], cfg: EvalConfig, tokenizer: Any, add_bos: bool, limit: int,
) -> tuple[list[list[int]], list[Request], list[str]]:
    """Drop demonstrations from the front of every prompt whose context + longest option exceeds
    ``limit`` tokens, one at a time, until it fits or has none left (then the scorer cuts it)."""
    demos, requests, prompts = [list(d) for d in demos], list(requests), list(prompts)
    while True:
        over = [i for i, r in enumerate(requests) if demos[i] and _too_long(r, limit)]
        if not over:
            return demos, requests, prompts
        for i in over:
            demos[i] = demos[i][1:]
        reqs, _, texts = build_requests([items[i] for i in over], pool, [demos[i] for i in over], cfg, tokenizer,
                                        add_bos)
        for j, i in enumerate(over):
            requests[i], prompts[i] = reqs[j], texts[j]


def evaluate(
    loaded: LoadedModel,
    items: Sequence[MCQItem],
    cfg: EvalConfig = EvalConfig(),
    *,
    pool: Sequence[MCQItem] | None = None,
    mesh: Mesh | None = None,
    encoder: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``items``; returns ``{summary, efficiency, timing, questions, skipped, demo_selector,
    fit, example_prompt}``. Raises :class:`OverlongError` (before any demonstration selection or
    scoring) if an option alone does not fit and ``cfg.overlong == "error"``."""
    items = list(items)
    pool = list(items) if pool is None else list(pool)
    scorer = LoglikScorer(loaded.model, mesh, rows_per_batch=cfg.rows_per_batch, max_positions=cfg.max_positions,
                          reuse_prefix=cfg.reuse_prefix, max_shapes=cfg.max_shapes)
    limit = scorer.limit
    t0 = time.perf_counter()
    # 1. options that alone do not fit: known from the 0-shot requests, before any expensive work
    zero, cands, prompts = build_requests(items, pool, [[] for _ in items], cfg, loaded.tokenizer, loaded.add_bos)
    over = [(i, it, max(map(len, r.continuations))) for i, (it, r) in enumerate(zip(items, zero, strict=True))
            if max(map(len, r.continuations)) + 1 > limit]
    if over and (cfg.overlong == "error" or len(over) == len(items)):  # (nothing would be left to score)
        raise OverlongError(over, limit, len(items), loaded.description)
    skipped = [{"id": it.id, "index": i, "longest_option_tokens": n, "limit": limit,
                "reason": f"an answer option of {n} tokens leaves no room for the prompt within {limit} tokens"}
               for i, it, n in over]
    if skipped:
        log.warning("skipping %d of %d questions whose longest option alone exceeds the %d-token limit "
                    "(first: %s); they are listed under 'skipped' in results.json",
                    len(skipped), len(items), limit, ", ".join(s["id"] for s in skipped[:5]))
    t_tok = time.perf_counter() - t0
    # 2. demonstrations (chosen for every question, so the skipped ones do not shift the others')
    t1 = time.perf_counter()
    demos, selector = select_demos(items, pool, cfg, mesh, encoder, progress)
    t_demos = time.perf_counter() - t1
    keep = [i for i in range(len(items)) if i not in {s["index"] for s in skipped}]
    items_k = [items[i] for i in keep]
    demos = [demos[i] for i in keep]
    cands = [cands[i] for i in keep]
    t2 = time.perf_counter()
    if cfg.shots > 0:
        requests, _, prompts = build_requests(items_k, pool, demos, cfg, loaded.tokenizer, loaded.add_bos)
    else:
        requests, prompts = [zero[i] for i in keep], [prompts[i] for i in keep]
    fewer = 0
    if cfg.shots > 0 and cfg.fit_demos:
        fitted, requests, prompts = fit_demos(items_k, pool, demos, requests, prompts, cfg, loaded.tokenizer,
                                              loaded.add_bos, limit)
        fewer = sum(len(a) < len(b) for a, b in zip(fitted, demos, strict=True))
        dropped = sum(len(b) - len(a) for a, b in zip(fitted, demos, strict=True))
        demos = fitted
    else:
        dropped = 0
    if fewer:
        log.warning("%d of %d prompts did not fit %d tokens with %d demonstrations and lost %d in all "
                    "(front first, least relevant)", fewer, len(items_k), limit, cfg.shots, dropped)
    t_tok += time.perf_counter() - t2
    t3 = time.perf_counter()
    if requests:
        scorer.warmup(requests)  # compile every row shape first, so score_s / questions_per_s are steady state
    t_compile = time.perf_counter() - t3
    t3 = time.perf_counter()
    scores, stats = scorer.score(requests, progress=progress, desc="NetEval")
    t_score = time.perf_counter() - t3
    if stats.truncated:
        log.warning("%d of %d prompts were cut from the left to fit %d tokens", stats.truncated, len(requests),
                    limit)
    results = [metrics.score_question(it, c, s) for it, c, s in zip(items_k, cands, scores, strict=True)]
    summary = metrics.summarize(results, cfg.bootstrap, cfg.seed, cfg.max_groups)
    shown = [len(d) for d in demos]
    return {
        "summary": summary,
        "efficiency": stats.as_dict(),
        "timing": {
            "demo_selection_s": t_demos, "tokenize_s": t_tok, "compile_s": t_compile, "score_s": t_score,
            "questions_per_s": len(items_k) / max(t_score, 1e-9),
        },
        "questions_total": len(items),
        "questions_scored": len(items_k),
        "skipped": skipped,
        "demo_selector": selector,
        "fit": {
            "limit": limit, "shots": cfg.shots, "fit_demos": cfg.fit_demos,
            "prompts_with_fewer_demos": fewer, "demos_dropped": dropped,
            "mean_demos_shown": sum(shown) / max(len(shown), 1), "prompts_truncated": stats.truncated,
        },
        "questions": [dict(r.as_dict(), demos=[pool[i].id for i in d]) for r, d in zip(results, demos, strict=True)],
        "example_prompt": prompts[0] if prompts else "",
    }


def notes(payload: dict[str, Any]) -> list[str]:
    """Human-readable lines on what the run really did (selector, skipped, fitted, truncated)."""
    fit = payload.get("fit", {})
    out = []
    if fit.get("shots"):
        out.append(f"demonstrations: {payload.get('demo_selector')}; mean {fit['mean_demos_shown']:.2f} of "
                   f"{fit['shots']} shown")
    if fit.get("prompts_with_fewer_demos"):
        out.append(f"{fit['prompts_with_fewer_demos']} prompts lost {fit['demos_dropped']} demonstrations in all "
                   f"to fit {fit['limit']} tokens (raise --max_positions to keep them)")
    if fit.get("prompts_truncated"):
        out.append(f"{fit['prompts_truncated']} prompts were cut from the left to fit {fit['limit']} tokens")
    if payload.get("skipped"):
        ids = ", ".join(s["id"] for s in payload["skipped"][:5])
        more = " ..." if len(payload["skipped"]) > 5 else ""
        out.append(f"SKIPPED {len(payload['skipped'])} of {payload['questions_total']} questions (an option alone "
                   f"exceeds {fit.get('limit')} tokens: {ids}{more}); the tables cover the "
                   f"{payload['questions_scored']} scored")
    return out


def write_outputs(payload: dict[str, Any], out_dir: Path, title: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = notes(payload)
    md = "# " + title + "\n\n" + "".join(f"- {n}\n" for n in lines) + ("\n" if lines else "")
    md += report.markdown_tables(payload["summary"])
    paths = {
        "json": report.write_json(out_dir / "results.json", payload),
        "markdown": out_dir / "results.md",
        "png": report.plot(payload["summary"], out_dir / "results.png", title),
    }
    paths["markdown"].write_text(md, encoding="utf-8")
    return paths


# ------------------------------------------------------------------------------------ CLI
def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("model", None, "hf:<dir> | config:<preset> | ckpt:<dir>.", required=True)
    flags.DEFINE_string("data", str(sample_path()), "Question file (or OpsEval folder).")
    flags.DEFINE_enum("format", "auto", ["auto", *FORMATS], "Data format (auto: from the file name).")
    flags.DEFINE_integer("limit", 0, "Evaluate only the first N questions (0 = all); demonstrations still come "
                         "from the whole file (leave-one-out) unless --demo_pool is given.")
    flags.DEFINE_integer("sample", 0, "Evaluate a seeded random sample of N questions, the same share from every "
                         "language (0 = off; after --limit); e.g. a quick run on both languages.")
    flags.DEFINE_integer("shots", 0, "Demonstrations per prompt.")
    flags.DEFINE_enum("demos", "random", list(DEMO_KINDS), "How demonstrations are chosen.")
    flags.DEFINE_string("demo_pool", None, "Demonstration pool file (default: the evaluation file, leave-one-out).")
    flags.DEFINE_enum("demo_pool_format", "auto", ["auto", *FORMATS], "Format of --demo_pool.")
    flags.DEFINE_string("ranker_dir", None, "Trained Pistis ranker folder (for --demos pistis; without it the "
                        "pre-ranking order is used and results.json says so).")
    flags.DEFINE_enum("answer_format", "text", list(ANSWER_FORMATS), "Continuation: option text or letter.")
    flags.DEFINE_enum("multi", "topk", list(MULTI_MODES), "Multi-answer questions: top-|gold| options or option sets.")
    flags.DEFINE_string("out", "neteval_results", "Output folder (results.json / .md / .png).")
    flags.DEFINE_integer("seed", 0, "Seed for random demonstrations, random init and bootstrap.")
    flags.DEFINE_integer("rows_per_batch", 8, "Packed rows per forward call.")
    flags.DEFINE_bool("reuse_prefix", True, "Score all options after one shared context (tree packing).")
    flags.DEFINE_integer("max_positions", 0, "Longest context+option (0 = the model's max_seq_len).")
    flags.DEFINE_integer("max_shapes", MAX_SHAPES, "Most row lengths (compiled shapes) per run.")
    flags.DEFINE_bool("fit_demos", True, "Drop demonstrations (least relevant first) from prompts that do not fit "
                      "--max_positions; --nofit_demos cuts tokens from the left instead.")
    flags.DEFINE_enum("overlong", "error", list(OVERLONG_MODES), "A question whose answer option alone exceeds "
                      "--max_positions: stop with an error, or skip it (listed in results.json, counted).")
    flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the 95% intervals.")
    flags.DEFINE_integer("max_groups", 12, "Rows per table before small groups are folded into 'other'.")
    flags.DEFINE_string("tokenizer", None, "tokenizer.json for config:<preset> models.")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
    flags.DEFINE_integer("mesh_data", -1, "Mesh data axis size (-1 = the remaining devices).")
    flags.DEFINE_integer("mesh_fsdp", 1, "Mesh fsdp axis size.")
    flags.DEFINE_integer("mesh_tensor", 1, "Mesh tensor axis size.")


def _fail(message: str) -> None:
    """One line on stderr and exit code 2 (a usage / input problem, no traceback)."""
    import sys

    print(f"neteval: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: Sequence[str]) -> None:
    from absl import flags

    from eval.mcq_data import DataError
    from eval.models import load_model
    from jaxrl_desktop.mesh import make_mesh

    del argv
    f = flags.FLAGS
    try:
        data = load_mcq(f.data, f.format)
        pool = load_mcq(f.demo_pool, f.demo_pool_format) if f.demo_pool else None
    except DataError as e:
        _fail(str(e))
    items = data[: f.limit] if f.limit > 0 else data
    if f.sample > 0:
        items = sample_items(items, f.sample, f.seed)
    pool_desc = f.demo_pool or f"the evaluation file, leave-one-out ({len(data)} questions)"
    if pool is None and f.shots > 0:
        pool = data  # --limit: still draw demonstrations from the whole file
    subset = f" ({len(items)} of {len(data)}: " + ", ".join(
        ([f"first {f.limit}"] if f.limit > 0 else []) + ([f"seeded sample of {f.sample}"] if f.sample > 0 else [])
    ) + ")" if len(items) < len(data) else ""
    print(f"data: {f.data} -> {summarize(items)}{subset}")
    mesh = make_mesh(data=f.mesh_data, fsdp=f.mesh_fsdp, tensor=f.mesh_tensor)
    # config:<preset> trains its tokenizer on the whole file (so --limit does not change the tokens)
    src = list(data) + (list(pool) if f.demo_pool else [])
    texts = [it.question + "\n" + "\n".join(it.options) for it in src]
    try:
        loaded = load_model(f.model, mesh, tokenizer_path=f.tokenizer, tokenizer_texts=texts, dtype=f.dtype,
                            seed=f.seed)
    except (NotImplementedError, ValueError, FileNotFoundError, KeyError) as e:
        _fail(f"--model {f.model}: {e}")
    print(f"model: {loaded.description}; mesh {dict(mesh.shape)}")
    cfg = EvalConfig(
        shots=f.shots, demos=f.demos, prompt=PromptConfig(answer_format=f.answer_format, multi=f.multi),
        seed=f.seed, rows_per_batch=f.rows_per_batch, reuse_prefix=f.reuse_prefix,
        max_positions=f.max_positions or None, bootstrap=f.bootstrap, max_groups=f.max_groups,
        ranker_dir=f.ranker_dir, fit_demos=f.fit_demos, overlong=f.overlong, max_shapes=f.max_shapes,
    )
    try:
        payload = evaluate(loaded, items, cfg, pool=pool, mesh=mesh, progress=True)
    except OverlongError as e:
        _fail(str(e))
    except (RuntimeError, FileNotFoundError, ValueError) as e:  # e.g. a bad --ranker_dir, too small a pool
        if isinstance(e, RuntimeError) and "pistis" not in str(e).lower():
            raise
        log.debug("traceback", exc_info=True)
        _fail(f"{e} (--verbosity=1 shows the traceback)")
    payload["config"] = {
        "model": loaded.description, "data": f.data, "format": f.format, "questions": len(items),
        "limit": f.limit or None, "sample": f.sample or None, "shots": f.shots, "demos": f.demos if f.shots else None,
        "demo_selector": payload["demo_selector"], "ranker_dir": f.ranker_dir,
        "demo_pool": pool_desc if f.shots else None, "answer_format": f.answer_format, "multi": f.multi,
        "max_positions": payload["fit"]["limit"], "fit_demos": f.fit_demos, "overlong": f.overlong,
        "seed": f.seed, "mesh": dict(mesh.shape),
    }
    title = f"{loaded.description} on {Path(f.data).name}: {f.shots}-shot" + (f" ({f.demos} demos)" if f.shots else "")
    paths = write_outputs(payload, Path(f.out), title)
    print()
    print(report.markdown_tables(payload["summary"]))
    for line in notes(payload):
        print(line)
    e, t = payload["efficiency"], payload["timing"]
    skipped = f", {len(payload['skipped'])} SKIPPED" if payload["skipped"] else ""
    print(
        f"{payload['questions_scored']} of {payload['questions_total']} questions scored{skipped} in "
        f"{t['score_s']:.1f}s ({t['questions_per_s']:.1f} q/s; compile {t['compile_s']:.1f}s); real/computed tokens {e['efficiency']:.3f}; "
        f"prefix reuse saves {e['prefix_saving']:.2f}x; {len(e['shapes'])} shapes; {e['truncated']} contexts truncated"
    )
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
