"""Result outputs: markdown tables, results JSON and a PNG bar chart (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TABLES: tuple[tuple[str, str], ...] = (
    ("overall", "Overall"),
    ("language", "Language"),
    ("answer_type", "Answer type"),
    ("subdomain", "Sub-domain"),
)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown_tables(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One markdown table per grouping: count, acc, acc_norm (percent) with 95% bootstrap intervals."""
    parts = []
    for key, title in TABLES:
        table = summary.get(key)
        if not table:
            continue
        lines = [
            f"| {title} | n | acc | 95% CI | acc_norm | 95% CI | chance |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for group, row in table.items():
            name = str(group).replace("|", "\\|")
            lo, hi = row["acc_ci"]
            nlo, nhi = row["acc_norm_ci"]
            lines.append(
                f"| {name} | {row['count']} | {_pct(row['acc'])} | {_pct(lo)}–{_pct(hi)} | "
                f"{_pct(row['acc_norm'])} | {_pct(nlo)}–{_pct(nhi)} | {_pct(row['chance'])} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False, default=_jsonable))
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, (set, tuple)):
        return list(x)
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _cjk_font() -> str | None:
    """Name of an installed font that really has CJK glyphs (checked in its character map), if any."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    hints = ("cjk", "wenquanyi", "source han", "droid sans fallback", "ar pl", "simhei", "heiti", "song", "noto sans sc")
    for f in font_manager.fontManager.ttflist:
        if not any(h in f.name.lower() for h in hints):
            continue
        try:
            if ord("网") in FT2Font(f.fname).get_charmap():
                return f.name
        except (OSError, RuntimeError):
            continue
    return None


def _label(name: str, rank: int, cjk_font: str | None) -> str:
    """The label, or a placeholder when it needs CJK glyphs no installed font has (see the table)."""
    if cjk_font or all(ord(c) < 0x2E80 for c in name):
        return name
    return f"#{rank} (CJK name, see table)"


def plot(summary: dict[str, dict[str, dict[str, Any]]], path: Path, title: str = "") -> Path:
    """Bar chart of acc and acc_norm (95% CI error bars, chance as a tick) by language, answer type
    and sub-domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cjk = _cjk_font()
    if cjk:
        plt.rcParams["font.sans-serif"] = [cjk, *plt.rcParams["font.sans-serif"]]
    left = [(f"{k}: {g}" if k != "overall" else "overall", row)
            for k in ("overall", "language", "answer_type") for g, row in summary.get(k, {}).items()]
    right = list(summary.get("subdomain", {}).items())
    fig, axes = plt.subplots(
        1, 2, figsize=(14, 0.45 * max(len(left), len(right)) + 2.5),
        gridspec_kw={"width_ratios": [1, 1.4]},
    )
    for ax, rows, label in ((axes[0], left, "groups"), (axes[1], right, "sub-domain")):
        if not rows:
            ax.axis("off")
            continue
        y = np.arange(len(rows))
        h = 0.38
        for off, metric, color in ((-h / 2, "acc", "#4C72B0"), (h / 2, "acc_norm", "#DD8452")):
            vals = np.array([r[metric] for _, r in rows])
            ci = np.array([r[f"{metric}_ci"] for _, r in rows])
            err = np.stack([vals - ci[:, 0], ci[:, 1] - vals]).clip(min=0)
            ax.barh(y + off, vals, height=h, xerr=err, color=color, label=metric, capsize=2)
        ax.scatter([r["chance"] for _, r in rows], y, marker="|", s=200, color="k", label="chance", zorder=3)
        names = [_label(name, i, cjk) for i, (name, _) in enumerate(rows, start=1)]
        ax.set_yticks(y, [f"{name} (n={r['count']})" for name, (_, r) in zip(names, rows, strict=True)], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("accuracy")
        ax.set_title(f"by {label}")
        ax.grid(axis="x", alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
