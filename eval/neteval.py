"""NetEval-style multiple-choice evaluation by log-likelihood (acc / acc_norm), zero- or k-shot.

    python -m eval.neteval --model config:small --data eval/data/neteval_sample.jsonl --shots 0
    python -m eval.neteval --model hf:/models/qwen2-0.5b \\
        --data ../shared/data/opseval_wired_network/test.json --format opseval --shots 5 --demos dense

Prints tables per sub-domain, language and answer type (count, acc, acc_norm with 95% bootstrap
intervals) and writes ``results.json``, ``results.md`` and ``results.png`` into ``--out``.
The library entry point is :func:`evaluate`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jax.sharding import Mesh

from eval import metrics, report
from eval.demos import DEMO_KINDS, make_selector
from eval.loglik import LoglikScorer, Request, encode_requests
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


def choose_demos(
    items: Sequence[MCQItem], pool: Sequence[MCQItem], cfg: EvalConfig, mesh: Mesh | None = None,
    encoder: Any = None, progress: bool = False,
) -> list[list[int]]:
    """Pool indices of the demonstrations of every item (empty lists for zero-shot)."""
    if cfg.shots <= 0:
        return [[] for _ in items]
    selector = make_selector(cfg.demos, pool, items, seed=cfg.seed, mesh=mesh, encoder=encoder,
                             ranker_dir=cfg.ranker_dir, progress=progress)
    select_all = getattr(selector, "select_all", None)
    if select_all is not None:
        return select_all(cfg.shots)
    return [selector.select(i, cfg.shots) for i in range(len(items))]


def build_requests(
    items: Sequence[MCQItem], pool: Sequence[MCQItem], demos: Sequence[Sequence[int]], cfg: EvalConfig,
    tokenizer: Any, add_bos: bool,
) -> tuple[list[Request], list[Candidates], list[str]]:
    """Prompts, their candidates and tokenised requests."""
    prompts = [build_prompt(item, [pool[i] for i in idx], cfg.prompt) for item, idx in zip(items, demos, strict=True)]
    cands = [candidates(item, cfg.prompt) for item in items]
    conts = [[delimiter(item) + t for t in c.texts] for item, c in zip(items, cands, strict=True)]
    return encode_requests(tokenizer, prompts, conts, add_bos=add_bos), cands, prompts


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
    """Score ``items``; returns ``{summary, efficiency, timing, questions, example_prompt}``."""
    pool = list(items) if pool is None else list(pool)
    t0 = time.perf_counter()
    demos = choose_demos(items, pool, cfg, mesh, encoder, progress)
    t_demos = time.perf_counter() - t0
    requests, cands, prompts = build_requests(items, pool, demos, cfg, loaded.tokenizer, loaded.add_bos)
    t_tok = time.perf_counter() - t0 - t_demos
    scorer = LoglikScorer(loaded.model, mesh, rows_per_batch=cfg.rows_per_batch, max_positions=cfg.max_positions,
                          reuse_prefix=cfg.reuse_prefix)
    t1 = time.perf_counter()
    scores, stats = scorer.score(requests, progress=progress, desc="NetEval")
    t_score = time.perf_counter() - t1
    results = [metrics.score_question(it, c, s) for it, c, s in zip(items, cands, scores, strict=True)]
    summary = metrics.summarize(results, cfg.bootstrap, cfg.seed, cfg.max_groups)
    return {
        "summary": summary,
        "efficiency": stats.as_dict(),
        "timing": {
            "demo_selection_s": t_demos, "tokenize_s": t_tok, "score_s": t_score,
            "questions_per_s": len(items) / max(t_score, 1e-9),
        },
        "questions": [dict(r.as_dict(), demos=[pool[i].id for i in d]) for r, d in zip(results, demos, strict=True)],
        "example_prompt": prompts[0] if prompts else "",
    }


def write_outputs(payload: dict[str, Any], out_dir: Path, title: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = "# " + title + "\n\n" + report.markdown_tables(payload["summary"])
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
    flags.DEFINE_integer("limit", 0, "Evaluate only the first N questions (0 = all).")
    flags.DEFINE_integer("shots", 0, "Demonstrations per prompt.")
    flags.DEFINE_enum("demos", "random", list(DEMO_KINDS), "How demonstrations are chosen.")
    flags.DEFINE_string("demo_pool", None, "Demonstration pool file (default: the evaluation set, leave-one-out).")
    flags.DEFINE_enum("demo_pool_format", "auto", ["auto", *FORMATS], "Format of --demo_pool.")
    flags.DEFINE_string("ranker_dir", None, "Trained Pistis ranker folder (for --demos pistis).")
    flags.DEFINE_enum("answer_format", "text", list(ANSWER_FORMATS), "Continuation: option text or letter.")
    flags.DEFINE_enum("multi", "topk", list(MULTI_MODES), "Multi-answer questions: top-|gold| options or option sets.")
    flags.DEFINE_string("out", "neteval_results", "Output folder (results.json / .md / .png).")
    flags.DEFINE_integer("seed", 0, "Seed for random demonstrations, random init and bootstrap.")
    flags.DEFINE_integer("rows_per_batch", 8, "Packed rows per forward call.")
    flags.DEFINE_bool("reuse_prefix", True, "Score all options after one shared context (tree packing).")
    flags.DEFINE_integer("max_positions", 0, "Longest context+option (0 = the model's max_seq_len).")
    flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the 95% intervals.")
    flags.DEFINE_integer("max_groups", 12, "Rows per table before small groups are folded into 'other'.")
    flags.DEFINE_string("tokenizer", None, "tokenizer.json for config:<preset> models.")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
    flags.DEFINE_integer("mesh_data", -1, "Mesh data axis size (-1 = the remaining devices).")
    flags.DEFINE_integer("mesh_fsdp", 1, "Mesh fsdp axis size.")
    flags.DEFINE_integer("mesh_tensor", 1, "Mesh tensor axis size.")


def main(argv: Sequence[str]) -> None:
    from absl import app, flags

    from eval.mcq_data import DataError
    from eval.models import load_model
    from jaxrl_desktop.mesh import make_mesh

    del argv
    f = flags.FLAGS
    try:
        items = load_mcq(f.data, f.format)
        pool = load_mcq(f.demo_pool, f.demo_pool_format) if f.demo_pool else None
    except DataError as e:
        raise app.UsageError(str(e)) from None
    if f.limit > 0:
        items = items[: f.limit]
    print(f"data: {f.data} -> {summarize(items)}")
    mesh = make_mesh(data=f.mesh_data, fsdp=f.mesh_fsdp, tensor=f.mesh_tensor)
    texts = [it.question + "\n" + "\n".join(it.options) for it in (items + (pool or []))]
    try:
        loaded = load_model(f.model, mesh, tokenizer_path=f.tokenizer, tokenizer_texts=texts, dtype=f.dtype,
                            seed=f.seed)
    except (NotImplementedError, ValueError, FileNotFoundError, KeyError) as e:
        raise app.UsageError(f"--model {f.model}: {e}") from None
    print(f"model: {loaded.description}; mesh {dict(mesh.shape)}")
    cfg = EvalConfig(
        shots=f.shots, demos=f.demos, prompt=PromptConfig(answer_format=f.answer_format, multi=f.multi),
        seed=f.seed, rows_per_batch=f.rows_per_batch, reuse_prefix=f.reuse_prefix,
        max_positions=f.max_positions or None, bootstrap=f.bootstrap, max_groups=f.max_groups,
        ranker_dir=f.ranker_dir,
    )
    try:
        payload = evaluate(loaded, items, cfg, pool=pool, mesh=mesh, progress=True)
    except RuntimeError as e:
        if "pistis" in str(e).lower() or "PistisCascade" in str(e):
            raise app.UsageError(str(e)) from None
        raise
    payload["config"] = {
        "model": loaded.description, "data": f.data, "format": f.format, "questions": len(items),
        "shots": f.shots, "demos": f.demos if f.shots else None, "demo_pool": f.demo_pool or "eval set (leave-one-out)",
        "answer_format": f.answer_format, "multi": f.multi, "seed": f.seed, "mesh": dict(mesh.shape),
    }
    title = f"{loaded.description} on {Path(f.data).name}: {f.shots}-shot" + (f" ({f.demos} demos)" if f.shots else "")
    paths = write_outputs(payload, Path(f.out), title)
    print()
    print(report.markdown_tables(payload["summary"]))
    e, t = payload["efficiency"], payload["timing"]
    print(
        f"{len(items)} questions in {t['score_s']:.1f}s ({t['questions_per_s']:.1f} q/s); real/computed tokens "
        f"{e['efficiency']:.3f}; prefix reuse saves {e['prefix_saving']:.2f}x; {len(e['shapes'])} shapes; "
        f"{e['truncated']} contexts truncated"
    )
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
