"""Models shared by the learner, ranking and evaluation."""

from jaxrl_desktop.model_configs import PRESETS, DecoderConfig, get_config, param_count
from jaxrl_desktop.models.attention import KVCache, dot_product_attention
from jaxrl_desktop.models.decoder import (
    Decoder,
    entropy_from_logits,
    log_probs_from_logits,
    make_lm_loss,
    next_token_loss,
    positions_from_mask,
    positions_from_segments,
    sequence_logprob,
    shift_logprobs,
    token_logprobs,
)

__all__ = [
    "PRESETS",
    "Decoder",
    "DecoderConfig",
    "KVCache",
    "dot_product_attention",
    "entropy_from_logits",
    "get_config",
    "log_probs_from_logits",
    "make_lm_loss",
    "next_token_loss",
    "param_count",
    "positions_from_mask",
    "positions_from_segments",
    "sequence_logprob",
    "shift_logprobs",
    "token_logprobs",
]
