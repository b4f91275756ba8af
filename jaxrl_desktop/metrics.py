"""Training metrics: JSONL (the source of truth), TensorBoard event files, and the end-of-run plot."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    """Appends one JSON object per record to ``metrics.jsonl`` and mirrors numbers to TensorBoard."""

    def __init__(self, workdir: str | Path, tensorboard: bool = True):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self._tb = EventFileWriter(str(self.dir / "tb")) if tensorboard else None

    def rewind(self, step: int) -> int:
        """Drop records after ``step`` (logged by a run that died before its next checkpoint); they are
        moved to ``metrics.discarded.jsonl``, not deleted. Returns how many were moved."""
        if not self.path.exists():
            return 0
        keep, drop = [], []
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                drop.append(line)
                continue
            (keep if rec.get("step", -1) <= step else drop).append(line)
        if drop:
            with open(self.dir / "metrics.discarded.jsonl", "a") as f:
                f.write("\n".join(drop) + "\n")
        self.path.write_text("".join(line + "\n" for line in keep))
        return len(drop)

    def log(self, step: int, record: dict[str, Any]) -> dict[str, Any]:
        rec = {"step": int(step), **{k: _clean(v) for k, v in record.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        if self._tb is not None:
            values = [Summary.Value(tag=k, simple_value=float(v)) for k, v in rec.items()
                      if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)]
            if values:
                self._tb.add_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=values)))
        return rec

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics file; a line cut short by a killed writer is skipped."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _phase_spans(records: list[dict]) -> list[tuple[str, float, float]]:
    """(phase label, first step, last step) from the train records, split at logged phase changes."""
    changes = {(r["step"], r["to"]) for r in records if r.get("kind") == "phase_change"}
    spans: list[tuple[str, float, float]] = []
    for r in records:
        if r.get("kind") != "train":
            continue
        phase = r.get("phase", "")
        if spans and spans[-1][0] == phase:
            spans[-1] = (phase, spans[-1][1], r["step"])
        else:
            start = next((s for s, to in changes if to == phase and s < r["step"]), r["step"] - 1)
            spans.append((phase, start, r["step"]))
    return spans


def plot_training(records: list[dict], out: str | Path) -> Path:
    """Success rate (rollouts and held-out evals) and entropy over training, phases shaded. When RL
    phases exist, a right-hand column zooms in on them (they are short next to behaviour cloning)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    rl = [r for r in train if "rollout_success" in r]
    ent = [r for r in train if "entropy" in r]
    spans = _phase_spans(records)
    zoom = rl[0]["step"] - 2 if rl else None
    cols = 2 if zoom is not None else 1
    fig, axes = plt.subplots(2, cols, figsize=(9 if cols == 1 else 13, 6), squeeze=False,
                             gridspec_kw={"width_ratios": [1.4, 1] if cols == 2 else [1]})
    colors = {"copy": "tab:green", "bc": "tab:gray", "rl": "tab:blue", "entropulse": "tab:orange"}
    for c in range(cols):
        lo_x = zoom if c == 1 else None

        def keep(st: float, lo: float | None = lo_x) -> bool:
            return lo is None or st >= lo

        ax1, ax2 = axes[0][c], axes[1][c]
        pts = [r for r in rl if keep(r["step"])]
        ax1.plot([r["step"] for r in pts], [r["rollout_success"] for r in pts], ".", alpha=0.5,
                 label="RL rollouts (rl.split)")
        for split, style in (("heldout", "o-"), ("train", "s--")):
            pts = [r for r in evals if f"{split}_success" in r and keep(r["step"])]
            ax1.plot([r["step"] for r in pts], [r[f"{split}_success"] for r in pts], style, label=f"{split} eval")
        ax1.set_ylim(-0.02, 1.08)
        pts = [r for r in ent if keep(r["step"])]
        ax2.plot([r["step"] for r in pts], [r["entropy"] for r in pts], ".-" if c == 1 else "-",
                 color="tab:purple")
        ax2.set_xlabel("update step")
        if c == 1:
            ax2.set_yscale("log")
            ax1.set_title("RL and Entropulse (zoomed)", fontsize=9)
        else:
            ax1.set_ylabel("success rate")
            ax2.set_ylabel("action-token entropy")
            ax1.legend(loc="center left", fontsize=8)
        for phase, lo, hi in spans:
            if c == 1 and hi < zoom:
                continue
            base = phase.rstrip("0123456789")
            for ax in (ax1, ax2):
                ax.axvspan(max(lo, zoom) if c == 1 else lo, hi, color=colors.get(base, "white"), alpha=0.15)
            x = max(lo, zoom) if c == 1 else (lo + hi) / 2
            ax1.text(x, 1.06, phase, ha="left" if c == 1 else "center", va="top", fontsize=7)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
