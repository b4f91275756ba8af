"""The built-in simulated desktop (pure Python/NumPy, deterministic from a seed)."""

from env_server.actions import ActionSchema
from env_server.sim.apps import APP_CLASSES

SIM_SCHEMA: ActionSchema = ActionSchema.build(a for cls in APP_CLASSES for a in cls.API)

__all__ = ["SIM_SCHEMA"]
