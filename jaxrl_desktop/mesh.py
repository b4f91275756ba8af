"""The one device mesh (axes ``data``, ``fsdp``, ``tensor``) and the logical-axis rules table.

Every parameter carries logical axis names (``nnx.with_partitioning``); ``LOGICAL_AXIS_RULES`` maps them to
mesh axes. ``ranking/`` and ``eval/`` use the same helpers, so all models share one layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated).
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("index", ("data", "fsdp", "tensor")),  # rows of a retrieval index
)


def make_mesh(
    data: int = 1,
    fsdp: int = -1,
    tensor: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A mesh with axes (data, fsdp, tensor); one size may be -1 to take the remaining devices.

    Axes are ``Auto`` (GSPMD-style propagation); ``jax.make_mesh`` would default to Explicit.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = [data, fsdp, tensor]
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, shape, strict=True))}")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, shape, strict=True))}")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(
                f"{len(devices)} devices cannot be split over fixed axes of total size {known}"
            )
        shape[shape.index(-1)] = len(devices) // known
    total = int(np.prod(shape))
    if total > len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, shape, strict=True))} needs {total} devices, only {len(devices)} available"
        )
    grid = np.asarray(devices[:total], dtype=object).reshape(shape)
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return Mesh(grid, MESH_AXES, axis_types=axis_types)


def mesh_from_config(cfg) -> Mesh:
    """Build the mesh from a ``config.mesh`` block with fields ``data``, ``fsdp``, ``tensor``."""
    return make_mesh(data=cfg.data, fsdp=cfg.fsdp, tensor=cfg.tensor)


def logical_to_spec(
    logical_axes: Sequence[str | None] | None,
    rules: Sequence[tuple[str, str | tuple[str, ...] | None]] = LOGICAL_AXIS_RULES,
    mesh: Mesh | None = None,
) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec, dropping mesh axes of size 1 or already used."""
    if logical_axes is None:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    out: list[str | tuple[str, ...] | None] = []
    for name in logical_axes:
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
        target = table[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        keep = tuple(
            a for a in axes if a not in used and (mesh is None or mesh.shape.get(a, 1) > 1)
        )
        used.update(keep)
        out.append(None if not keep else keep[0] if len(keep) == 1 else keep)
    return PartitionSpec(*out)


def named_sharding(
    mesh: Mesh,
    logical_axes: Sequence[str | None] | None,
    rules: Sequence[tuple[str, str | tuple[str, ...] | None]] = LOGICAL_AXIS_RULES,
) -> NamedSharding:
    """NamedSharding on ``mesh`` for an array with the given logical axes."""
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
