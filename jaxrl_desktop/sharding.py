"""Parameter/batch shardings from the logical-axis rules, sharded model creation and a sharded train step.

Every parameter carries logical axis names in its ``out_sharding`` metadata (set with
``nnx.with_partitioning(..., eager_sharding=False)``). :func:`param_shardings` maps them through
``mesh.LOGICAL_AXIS_RULES`` to ``NamedSharding``s; a mesh axis that does not divide the dimension is
dropped (replicated) instead of failing, e.g. 2 KV heads on a tensor axis of 4.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrl_desktop.mesh import LOGICAL_AXIS_RULES, logical_to_spec

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]
PyTree = Any


# ----------------------------------------------------------------------------------- specs
def spec_for_shape(
    logical_axes: Sequence[str | None] | None,
    shape: Sequence[int],
    mesh: Mesh | jax.sharding.AbstractMesh,
    rules: Rules = LOGICAL_AXIS_RULES,
) -> PartitionSpec:
    """PartitionSpec for an array of ``shape``; mesh axes that do not divide a dimension are dropped."""
    spec = logical_to_spec(logical_axes, rules, mesh)
    out: list[str | tuple[str, ...] | None] = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        keep: list[str] = []
        size = 1
        for a in axes:
            if dim % (size * mesh.shape[a]) == 0:
                keep.append(a)
                size *= mesh.shape[a]
        out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    while out and out[-1] is None:
        out.pop()
    return PartitionSpec(*out)


def logical_axes_of(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names a variable was annotated with (None if unannotated)."""
    axes = variable.get_metadata().get("out_sharding")
    return tuple(axes) if axes else None


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def param_specs(state: nnx.State, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> nnx.State:
    """A State of PartitionSpecs (same structure as ``state``; works on abstract states too)."""

    def f(v: nnx.Variable) -> nnx.Variable:
        value = v.get_value()
        return v.replace(spec_for_shape(logical_axes_of(v), value.shape, mesh, rules))

    return jax.tree.map(f, state, is_leaf=_is_var)


def param_shardings(state: nnx.State, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> nnx.State:
    """A State of NamedShardings for ``state`` on ``mesh`` (usable as jit in/out_shardings)."""
    specs = param_specs(state, mesh, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def constrain(x: jax.Array, logical_axes: Sequence[str | None], rules: Rules = LOGICAL_AXIS_RULES) -> jax.Array:
    """Sharding constraint on an activation when traced under ``jax.set_mesh``; a no-op otherwise."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, spec_for_shape(logical_axes, x.shape, mesh, rules))


# ------------------------------------------------------------------------ model creation
def abstract_model(
    factory: Callable[[], nnx.Module], mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES
) -> tuple[nnx.GraphDef, nnx.State]:
    """Build nothing: the graphdef and a State of ``ShapeDtypeStruct``s carrying their shardings."""
    graphdef, state = nnx.split(nnx.eval_shape(factory))
    shardings = param_shardings(state, mesh, rules)
    abstract = jax.tree.map(
        lambda v, s: v.replace(jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype, sharding=s.get_value())),
        state, shardings, is_leaf=_is_var,
    )
    return graphdef, abstract


def create_sharded(
    factory: Callable[[], nnx.Module], mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES
) -> nnx.Module:
    """Initialise a model directly sharded: the init runs under jit with ``out_shardings``.

    ``factory`` must be deterministic (e.g. ``lambda: Decoder(cfg, rngs=nnx.Rngs(0))``).
    """
    graphdef, state = nnx.split(nnx.eval_shape(factory))
    shardings = param_shardings(state, mesh, rules)
    with jax.set_mesh(mesh):
        params = jax.jit(lambda: nnx.split(factory())[1], out_shardings=shardings)()
    return nnx.merge(graphdef, params)


# -------------------------------------------------------------------------------- batches
def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Rules = LOGICAL_AXIS_RULES) -> NamedSharding:
    """Leading axis on ("data", "fsdp"), the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules, mesh))


def local_rows(sharding: NamedSharding, global_shape: Sequence[int]) -> slice:
    """The contiguous rows of a batch-sharded global array that this process holds."""
    starts, stops = [], []
    for idx in sharding.addressable_devices_indices_map(tuple(global_shape)).values():
        s = idx[0]
        starts.append(s.start or 0)
        stops.append(global_shape[0] if s.stop is None else s.stop)
    return slice(min(starts), max(stops))


def shard_batch(batch: PyTree, mesh: Mesh, global_batch: bool = True) -> PyTree:
    """Place a batch (pytree of host arrays, leading batch axis) sharded over ("data", "fsdp").

    With ``global_batch=True`` each process passes the full global batch and keeps its rows;
    otherwise each process passes only its own rows (see :func:`local_rows`).
    """

    def put(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        sharding = batch_sharding(mesh, x.ndim)
        if global_batch:
            return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
        n_global = x.shape[0] * jax.process_count()
        return jax.make_array_from_process_local_data(sharding, x, (n_global, *x.shape[1:]))

    return jax.tree.map(put, batch)


# ---------------------------------------------------------------------------- train step
@flax.struct.dataclass
class TrainState:
    """Everything a train step updates: a pure pytree (checkpointable with orbax)."""

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState


def init_train_state(params: nnx.State, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def train_state_shardings(
    params: nnx.State,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: Rules = LOGICAL_AXIS_RULES,
) -> TrainState:
    """Shardings of a :class:`TrainState`: optimizer moments follow their parameters; the rest is
    replicated. ``params`` may be concrete or abstract."""
    pshard = param_shardings(params, mesh, rules)
    abstract_opt = jax.eval_shape(optimizer.init, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shard = optax.tree_map_params(
        optimizer, lambda _, s: s, abstract_opt, pshard,
        transform_non_params=lambda _: replicated, is_leaf=_is_var,
    )
    return TrainState(step=replicated, params=pshard, opt_state=opt_shard)


def create_train_state(
    factory: Callable[[], nnx.Module],
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: Rules = LOGICAL_AXIS_RULES,
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
    """(graphdef, sharded TrainState, its shardings), initialised under jit directly on ``mesh``."""
    graphdef, abstract = nnx.split(nnx.eval_shape(factory))
    shardings = train_state_shardings(abstract, optimizer, mesh, rules)

    def init() -> TrainState:
        return init_train_state(nnx.split(factory())[1], optimizer)

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return graphdef, state, shardings


LossFn = Callable[[nnx.State, PyTree], tuple[jax.Array, dict[str, jax.Array]]]


class ShardedStep:
    """A jitted step that traces/runs under ``jax.set_mesh(mesh)`` (so activation constraints apply)."""

    def __init__(self, jitted: Any, mesh: Mesh):
        self.jitted = jitted
        self.mesh = mesh

    def __call__(self, *args: Any) -> Any:
        with jax.set_mesh(self.mesh):
            return self.jitted(*args)

    def lower(self, *args: Any) -> Any:
        """``jax.stages.Lowered`` for (possibly abstract, sharded) arguments: compile checks, cost analysis."""
        with jax.set_mesh(self.mesh):
            return self.jitted.lower(*args)


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    state_shardings: TrainState,
    batch_shardings: PyTree,
    donate: bool = True,
) -> ShardedStep:
    """``step(state, batch) -> (state, metrics)`` jitted with explicit shardings and state donation.

    ``loss_fn(params, batch) -> (loss, metrics)``; metrics come back replicated and include
    ``loss`` and ``grad_norm``.
    """

    def step(state: TrainState, batch: PyTree) -> tuple[TrainState, dict[str, jax.Array]]:
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(
        step,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,) if donate else (),
    )
    return ShardedStep(jitted, mesh)


def abstract_train_state(abstract_params: nnx.State, optimizer: optax.GradientTransformation,
                         shardings: TrainState) -> TrainState:
    """A TrainState of sharded ``ShapeDtypeStruct``s (for ``ShardedStep.lower`` or orbax restore)."""
    abstract = jax.eval_shape(lambda p: init_train_state(p, optimizer), abstract_params)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
