"""Orbax checkpoints of the whole training state: array pytree (params, optimiser, reference policy,
RNG key) + JSON metadata (phase, counters, successful-rollout store, eval history).

Arrays are saved as a flat ``{index: array}`` dict with the pytree paths recorded in the metadata,
so restore works onto any mesh (each array is read straight into the target sharding) and a model
that changed shape is reported by name instead of failing deep inside orbax. Unreadable (corrupt or
partial) steps are skipped with a warning and the newest good one is used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

PyTree = Any


class CheckpointError(RuntimeError):
    pass


def _flatten(tree: PyTree) -> tuple[dict[str, Any], list[str], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat = {f"a{i:05d}": leaf for i, (_, leaf) in enumerate(leaves)}
    return flat, [jax.tree_util.keystr(p) for p, _ in leaves], treedef


class Checkpointer:
    """``save(step, tree, meta)`` / ``restore_latest(abstract_tree)`` over an orbax CheckpointManager."""

    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                                 create=True),
        )

    def save(self, step: int, tree: PyTree, meta: dict) -> None:
        """Save ``step``; a step saved before (e.g. a phase change that trained nothing) is replaced."""
        if step in self.manager.all_steps():
            self.manager.wait_until_finished()
            self.manager.delete(step)
        flat, paths, _ = _flatten(tree)
        meta = {**meta, "_paths": paths}
        self.manager.save(step, args=ocp.args.Composite(arrays=ocp.args.StandardSave(flat),
                                                        meta=ocp.args.JsonSave(meta)), force=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, step: int, abstract_tree: PyTree) -> tuple[PyTree, dict]:
        """Restore ``step`` into the shapes and shardings of ``abstract_tree``
        (``jax.ShapeDtypeStruct`` leaves with ``sharding``)."""
        flat, paths, treedef = _flatten(abstract_tree)
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        saved = meta.pop("_paths", None)
        if saved is not None and saved != paths:
            diff = sorted(set(saved) ^ set(paths))[:5]
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} holds a different state structure "
                f"(e.g. {diff}); was the model or optimiser config changed?")
        restored = self.manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(flat)))
        arrays = restored["arrays"]
        for key, want in flat.items():
            got = arrays[key]
            if got.shape != want.shape:
                raise CheckpointError(f"checkpoint step {step}: {paths[int(key[1:])]} has shape {got.shape}, "
                                      f"expected {want.shape}; was the model config changed?")
        return jax.tree_util.tree_unflatten(treedef, [arrays[k] for k in flat]), meta

    def restore_latest(self, *abstract_trees: PyTree) -> tuple[int, PyTree, dict] | None:
        """The newest step that restores cleanly into one of ``abstract_trees`` (tried in order: a
        training state may or may not hold a reference policy), or None if no step does. Broken
        (corrupt / partial) steps are logged and skipped; a step that matches none of the structures
        raises :class:`CheckpointError` (the config changed: not a reason to go back in time)."""
        if not abstract_trees:
            raise ValueError("restore_latest needs at least one abstract tree")
        self.wait()
        for step in reversed(self.steps()):
            mismatch = None
            for abstract_tree in abstract_trees:
                try:
                    tree, meta = self.restore(step, abstract_tree)
                except CheckpointError as err:
                    mismatch = err
                    continue
                except Exception as err:  # corrupt / partial directory
                    log.warning("checkpoint step %d in %s is unreadable (%s: %s); trying an older one",
                                step, self.directory, type(err).__name__, str(err).splitlines()[0][:200])
                    mismatch = None
                    break
                return step, tree, meta
            if mismatch is not None:
                raise mismatch
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
