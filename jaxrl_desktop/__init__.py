"""The learner: Flax NNX policy on a (data, fsdp, tensor) mesh, rollouts, BC -> GRPO -> Entropulse."""
