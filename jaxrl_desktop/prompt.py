"""What the policy reads and writes, as token ids.

Prompt = instruction, the last few actions, the last action's error/result, then the flattened a11y rows
(capped in rows and in tokens; the rows are cut first, the instruction never)::

    <|bos|><|user|>{instruction}
    <|system|>{previous actions, newest last} | {error or result}
    <|observation|>{a11y rows}
    <|action|>

Target = the action line followed by ``<|eos|>``; losses are taken on these tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jaxrl_desktop.tokenizer import Tokenizer

MAX_FEEDBACK_CHARS = 160
MAX_HISTORY_ACTION_CHARS = 120


@dataclass(frozen=True)
class PromptConfig:
    max_prompt_tokens: int = 384
    max_action_tokens: int = 48
    max_rows: int = 40
    history: int = 3


def feedback_text(error: str, result: str = "") -> str:
    if error:
        return f"error: {error[:MAX_FEEDBACK_CHARS]}"
    if result:
        return f"ok: {result[:MAX_FEEDBACK_CHARS]}"
    return ""


class PromptEncoder:
    """Builds prompt and action token ids for a tokenizer with the project's role tokens."""

    def __init__(self, tokenizer: Tokenizer, cfg: PromptConfig = PromptConfig()):
        self.tok = tokenizer
        self.cfg = cfg
        ids = {name: tokenizer.token_to_id(f"<|{name}|>") for name in
               ("user", "system", "observation", "action")}
        self.user, self.system, self.obs, self.act = (ids[k] for k in ("user", "system", "observation", "action"))
        if tokenizer.bos_id is None:
            raise ValueError("the policy tokenizer needs a bos token")

    def prompt(self, instruction: str, history: Sequence[str], feedback: str, a11y: str) -> list[int]:
        cfg = self.cfg
        rows = a11y.split("\n")[: cfg.max_rows]
        past = " ; ".join(a[:MAX_HISTORY_ACTION_CHARS] for a in history[-cfg.history:]) if cfg.history else ""
        head = [self.tok.bos_id, self.user, *self.tok.encode(instruction)]
        memo = [self.system, *self.tok.encode(f"{past} | {feedback}")]
        obs = [self.obs, *self.tok.encode("\n".join(rows))]
        budget = cfg.max_prompt_tokens - 1
        if len(head) > budget // 2:  # absurdly long instruction: keep its start
            head = head[: budget // 2]
        memo = memo[: max(0, min(len(memo), (budget - len(head)) // 2))]
        obs = obs[: max(0, budget - len(head) - len(memo))]
        return [*head, *memo, *obs, self.act]

    def action(self, text: str) -> list[int] | None:
        """Target ids of an action line (+ eos), or None if it does not fit ``max_action_tokens``."""
        ids = [*self.tok.encode(text), self.tok.eos_id]
        return ids if len(ids) <= self.cfg.max_action_tokens else None

    def decode_action(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        if self.tok.eos_id in ids:
            ids = ids[: ids.index(self.tok.eos_id)]
        return self.tok.decode(ids).strip()


def pack_prompts(prompts: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad prompts to ``length`` (so every prompt ends at the same column): (tokens, mask)."""
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for i, p in enumerate(prompts):
        if len(p) > length:
            raise ValueError(f"prompt of {len(p)} tokens exceeds the packed length {length}")
        tokens[i, length - len(p):] = p
        mask[i, length - len(p):] = True
    return tokens, mask
