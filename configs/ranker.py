"""Ranker training: ``python -m ranking.train --config=configs/ranker.py [--config.train.steps=500]``.

With no data named, trains on the SYNTHETIC order-matters task (``ranking.experiment_order``):
a tiny decoder is trained first and labels sampled orderings with its own log p(gold).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    from ranking.experiment_order import default_config as synthetic_config
    from ranking.train import default_model_config, default_train_config

    c = ml_collections.ConfigDict()
    c.workdir = "runs/ranker"
    c.seed = 0
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.model = default_model_config()
    c.train = default_train_config()
    c.data = ml_collections.ConfigDict(dict(
        lists="",  # comma-separated ListwiseData .npz files (e.g. from ranking.llm_labels)
        preranker="",  # the pre-ranker .npz whose scores those lists carry (shipped with the ranker)
        feedback="",  # JSONL feedback log (copy / regenerate / dislike), needs `index`
        feedback_errors="skip",  # malformed feedback lines: "skip" (warn with file:line) or "raise"
        index="",  # index folder from `python -m ranking.index` that feedback ids refer to
        n_match=100,
        n_prerank=30,
        synthetic=True,  # with no lists and no feedback: the synthetic order-matters task
    ))
    c.synthetic = synthetic_config()
    return c
