"""Episodes as self-contained HTML pages: one card per step with the screenshot, the action, the
error (if any) and the accessibility rows the agent saw."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from env_server.types import Observation
from env_server.wire import encode_png


@dataclass
class Frame:
    """The observation an agent saw and the action it then took ("" for the final frame)."""

    obs: Observation
    action: str = ""


def record(client, env_id: int, task, actions: Sequence[str]) -> list[Frame]:
    """Replay ``actions`` on ``env_id`` from a reset to ``task`` with PNG screenshots (envs are
    deterministic, so this reproduces an episode that ran without screenshots)."""
    obs = client.reset([env_id], [task], screenshot="png")[0].observation
    frames = [Frame(obs)]
    for a in actions:
        if obs.last:
            break
        frames[-1].action = a
        obs = client.step([env_id], [a], screenshot="png")[0].observation
        frames.append(Frame(obs))
    return frames


def _img(image: np.ndarray | None, width: int) -> str:
    if image is None:
        return "<p><i>no screenshot</i></p>"
    data = base64.b64encode(encode_png(image)).decode()
    return f'<img src="data:image/png;base64,{data}" width="{width}">'


def episode_html(frames: Sequence[Frame], title: str, width: int = 640) -> str:
    """One episode as an HTML section."""
    first, last = frames[0].obs, frames[-1].obs
    verdict = "solved" if last.reward > 0.5 else "not solved"
    parts = [f"<section><h2>{html.escape(title)}</h2>",
             f"<p><b>Instruction:</b> {html.escape(first.instruction)}<br><b>Result:</b> {verdict} "
             f"(reward {last.reward:g}, {len(frames) - 1} steps)</p>"]
    for i, f in enumerate(frames):
        err = f'<p class="err">error: {html.escape(f.obs.error)}</p>' if f.obs.error else ""
        act = f"<p><b>action:</b> <code>{html.escape(f.action)}</code></p>" if f.action else "<p><i>end</i></p>"
        parts.append(
            f'<div class="step"><h3>step {i}</h3>{err}{act}<div class="row">{_img(f.obs.screenshot, width)}'
            f"<pre>{html.escape(f.obs.a11y)}</pre></div></div>")
    parts.append("</section>")
    return "\n".join(parts)


def write_page(sections: Sequence[str], path: str | Path, title: str) -> Path:
    style = ("body{font-family:sans-serif;margin:20px} .step{border:1px solid #ccc;margin:8px 0;padding:8px}"
             ".row{display:flex;gap:12px;align-items:flex-start} pre{font-size:11px;max-height:420px;"
             "overflow:auto;background:#f6f6f6;padding:6px;flex:1} .err{color:#b00}")
    body = "\n".join(sections)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
