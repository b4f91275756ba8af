"""Query an index folder through the cascade and print the ordered demonstrations.

    python -m ranking.query --index DIR --query "which port does ssh use?" -k 5 [--ranker DIR]

Rows are printed in PROMPT order (first = first demonstration in the prompt). Without ``--ranker``
this is the pre-ranking order (best first); with it, the ranker's order (best last).
"""

from __future__ import annotations

import json
from collections.abc import Sequence


def run_query(cascade, query: str, k: int) -> list[dict]:
    """The selected demonstrations with their scores, in prompt order."""
    cands = cascade.candidates([query])
    order = cascade.order(cands, k)[0]
    ranker = None
    if cascade.scorer is not None:
        ranker = cascade.scorer(cands.inputs())[0][0]
    pos = {int(p): j for j, p in enumerate(cands.indices[0]) if p >= 0}
    rows = []
    for rank, idx in enumerate(order, 1):
        j = pos[idx]
        row = {"position": rank, "pool_index": idx, "id": cascade.index.ids[idx],
               "dense": float(cands.dense[0, j]), "prerank": float(cands.prerank[0, j]),
               "text": cascade.pool_texts[idx]}
        if ranker is not None:
            row["ranker"] = float(ranker[j])
        rows.append(row)
    return rows


def format_rows(rows: Sequence[dict], width: int = 100) -> str:
    has_ranker = any("ranker" in r for r in rows)
    head = f"{'#':>3} {'id':<16} {'dense':>7} {'prerank':>8}" + (f" {'ranker':>8}" if has_ranker else "")
    lines = [head + "  text"]
    for r in rows:
        text = r["text"].replace("\n", " ")
        text = text if len(text) <= width else text[: width - 3] + "..."
        line = f"{r['position']:>3} {r['id'][:16]:<16} {r['dense']:7.3f} {r['prerank']:8.3f}"
        if has_ranker:
            line += f" {r['ranker']:8.3f}"
        lines.append(f"{line}  {text}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    from absl import flags
    from absl import logging as absl_logging

    del argv
    f = flags.FLAGS
    if not f["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
    from ranking.cascade import PistisCascade
    from ranking.cli import fail, user_errors

    if not f.query.strip():
        fail("--query is empty")
    with user_errors():
        cascade = PistisCascade.from_index(f.index, ranker_dir=f.ranker, n_match=f.n_match,
                                           n_prerank=f.n_prerank)
    rows = run_query(cascade, f.query, f.k)
    if f.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    mode = "ranker order (best last)" if cascade.has_ranker else "pre-ranking order (best first)"
    print(f"query: {f.query}\n{len(rows)} of {len(cascade.index)} documents, {mode}:")
    print(format_rows(rows))


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("index", None, "Index folder written by `python -m ranking.index`.", required=True)
    flags.DEFINE_string("query", None, "The query text.", required=True)
    flags.DEFINE_integer("k", 5, "How many demonstrations to select.", lower_bound=1, short_name="k")
    flags.DEFINE_string("ranker", None, "Ranker folder written by `python -m ranking.train`.")
    flags.DEFINE_integer("n_match", 100, "Candidates kept by matching.", lower_bound=1)
    flags.DEFINE_integer("n_prerank", 30, "Candidates kept by pre-ranking.", lower_bound=1)
    flags.DEFINE_bool("json", False, "Print JSON instead of a table.")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
