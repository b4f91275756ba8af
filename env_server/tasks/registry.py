"""All task families, the train / held-out split, and task construction from a ``TaskRef``."""

from __future__ import annotations

import random

from env_server.tasks import (
    editor_tasks,
    files_tasks,
    mail_tasks,
    multi_tasks,
    settings_tasks,
    sheet_tasks,
    terminal_tasks,
)
from env_server.tasks.base import SPLITS, Task, TaskFamily
from env_server.types import TaskRef

_MODULES = (files_tasks, editor_tasks, sheet_tasks, terminal_tasks, settings_tasks, mail_tasks,
            multi_tasks)

FAMILIES: dict[str, TaskFamily] = {f.name: f for m in _MODULES for f in m.FAMILIES}
HELDOUT_FAMILIES: frozenset[str] = frozenset(n for m in _MODULES for n in m.HELDOUT)
assert FAMILIES.keys() >= HELDOUT_FAMILIES, HELDOUT_FAMILIES - FAMILIES.keys()


def family(name: str) -> TaskFamily:
    if name.startswith("x11."):  # real-desktop families live with the x11 backend (loaded on demand)
        from env_server.x11.tasks import FAMILIES as X11_FAMILIES

        if name in X11_FAMILIES:
            return X11_FAMILIES[name]
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown task family {name!r}; see `python -m env_server.tasks`") from None


def families(split: str) -> list[str]:
    """Family names that appear in ``split`` (train families appear in every split, held-out ones only
    in ``heldout``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    if split != "heldout":
        return [n for n in FAMILIES if n not in HELDOUT_FAMILIES]
    return list(FAMILIES)


def make_task(ref: TaskRef) -> Task:
    """The task a ``TaskRef`` names. An empty family samples one of the split's families by seed."""
    if ref.split not in SPLITS:
        raise ValueError(f"unknown split {ref.split!r}; use one of {SPLITS}")
    name = ref.family or random.Random(f"family:{ref.split}:{ref.seed}").choice(families(ref.split))
    fam = family(name)
    if ref.split != "heldout" and name in HELDOUT_FAMILIES:
        raise ValueError(f"family {name!r} is held out; it only exists in the 'heldout' split")
    return fam.make(ref.seed, ref.split)
