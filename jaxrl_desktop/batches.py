"""Fixed-shape training arrays from (prompt ids, action ids) pairs.

Layout of one row of length ``P + A``: the prompt left-padded into ``[0, P)`` (so it ends at column
``P - 1``, exactly as the sampler packs prompts) and the action right-padded into ``[P, P + A)``.
``loss_mask`` marks the action tokens; positions follow the attention mask, so a row's log-probs
equal those the sampler computed for the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_examples(
    prompts: Sequence[Sequence[int]],
    actions: Sequence[Sequence[int]],
    prompt_len: int,
    action_len: int,
    pad_id: int,
    rows: int | None = None,
) -> dict[str, np.ndarray]:
    """``tokens``, ``attention_mask``, ``loss_mask`` of shape ``[rows, P + A]``. Extra rows beyond the
    examples are padding (one dummy attended token, no loss)."""
    n = len(prompts)
    if len(actions) != n:
        raise ValueError(f"{n} prompts but {len(actions)} actions")
    rows = n if rows is None else rows
    if rows < n:
        raise ValueError(f"{n} examples do not fit in {rows} rows")
    t = prompt_len + action_len
    tokens = np.full((rows, t), pad_id, np.int32)
    attn = np.zeros((rows, t), bool)
    loss = np.zeros((rows, t), bool)
    for i, (p, a) in enumerate(zip(prompts, actions, strict=True)):
        if len(p) > prompt_len or len(a) > action_len:
            raise ValueError(f"example {i}: prompt {len(p)}/{prompt_len} or action {len(a)}/{action_len} "
                             "tokens too long")
        tokens[i, prompt_len - len(p):prompt_len] = p
        tokens[i, prompt_len:prompt_len + len(a)] = a
        attn[i, prompt_len - len(p):prompt_len + len(a)] = True
        loss[i, prompt_len:prompt_len + len(a)] = True
    attn[n:, 0] = True
    return {"tokens": tokens, "attention_mask": attn, "loss_mask": loss}


def per_token(values: Sequence[np.ndarray], prompt_len: int, action_len: int, rows: int) -> np.ndarray:
    """Place per-action-token values (e.g. sampling log-probs) at the action columns of each row."""
    out = np.zeros((rows, prompt_len + action_len), np.float32)
    for i, v in enumerate(values):
        out[i, prompt_len:prompt_len + len(v)] = v
    return out
