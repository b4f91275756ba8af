"""The backend interface every desktop implementation provides, and the registry of backends."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from env_server.actions import ActionSchema
from env_server.types import Observation, TaskRef


class Backend(ABC):
    """One desktop. ``reset`` starts a task, ``step`` applies one action line.

    A malformed or impossible action never raises: it yields an observation whose ``error`` explains it
    and still counts as a step.
    """

    name: str = ""
    schema: ActionSchema

    @abstractmethod
    def reset(self, task: TaskRef, *, screenshot: bool = False) -> Observation: ...

    @abstractmethod
    def step(self, action: str, *, screenshot: bool = False) -> Observation: ...

    @abstractmethod
    def evaluate(self) -> float:
        """The verifier's score of the current state (1.0 = task solved)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (processes, displays). Default: nothing to release."""


_BACKENDS: dict[str, Callable[..., Backend]] = {}


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    _BACKENDS[name] = factory


def make_backend(name: str, **kwargs) -> Backend:
    """Create a backend by name (``sim``; ``x11`` when available)."""
    if name not in _BACKENDS:
        _load_builtin(name)
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; available: {sorted(_BACKENDS) or ['sim']}")
    return _BACKENDS[name](**kwargs)


def _load_builtin(name: str) -> None:
    if name == "sim":
        import env_server.sim.backend
    elif name == "x11":
        try:
            import env_server.x11.backend  # noqa: F401
        except ImportError as err:  # pragma: no cover - depends on the machine
            raise ValueError(f"backend 'x11' is not available here: {err}") from err
