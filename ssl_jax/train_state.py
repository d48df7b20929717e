"""The train state (step, params, optimizer state) and its sharded initialisation.

Params are created directly in their sharded layout (big_vision's pattern): the state is first
built abstractly with `jax.eval_shape` -- with the models' logical-partitioning boxes still on,
and the optimizer initialised on those boxed params so Adam's moments carry the same boxes --
which gives every leaf a sharding; then `jax.jit(init, out_shardings=...)` materialises it.
The state itself holds plain arrays: the shardings carry the layout, and the logical specs are
kept beside it (in `StateLayout`) for restoring checkpoints onto another mesh.

    layout = train_state.state_layout(rng, model_init_fn, tx, mesh, rules)  # no FLOPs
    state = train_state.init_sharded(rng, model_init_fn, tx, layout)
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from ssl_jax import partitioning

# rng -> params pytree (e.g. `lambda rng: model.init(rng, **dummy_batch)['params']`), whose
# leaves may be boxed by nn.with_logical_partitioning.
ModelInitFn = Callable[[jax.Array], Any]


@struct.dataclass
class TrainState:
  """Everything a train step updates; a pytree of arrays, so jit/Orbax take it whole."""
  step: jax.Array  # int32 scalar: optimizer updates applied so far
  params: Any
  opt_state: optax.OptState

  def apply_gradients(self, grads: Any, tx: optax.GradientTransformation,
                      **extra_args) -> TrainState:
    """One optimizer update; `grads` has the structure of `params`. `extra_args` reach the
    transformations that take them (`optim.clip_by_global_norm`'s `grad_norm`)."""
    updates, opt_state = tx.update(grads, self.opt_state, self.params, **extra_args)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state)


class StateLayout(NamedTuple):
  """Where every leaf of the train state lives; all fields have the unboxed state's structure
  (except mesh/rules)."""
  abstract: TrainState  # jax.ShapeDtypeStruct leaves with .sharding: AOT lowering, restore target
  shardings: TrainState  # NamedSharding leaves: jit in_shardings/out_shardings
  logical_specs: TrainState  # PartitionSpecs of logical axis names: mesh-independent layout
  mesh: jax.sharding.Mesh
  rules: partitioning.LogicalRules


def _boxed_train_state(rng: jax.Array, model_init_fn: ModelInitFn,
                       tx: optax.GradientTransformation) -> TrainState:
  params = model_init_fn(rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=_fit_boxes(tx.init(params)))


def _fit_boxes(opt_state: Any) -> Any:
  """Optimizer state initialised from boxed params carries the params' boxes. Adam's moments
  have the params' shapes; Adafactor's factored row/column statistics (one axis fewer) and
  placeholders (shape (1,)) do not: those are replicated (they are small), and a placeholder's
  size-1 axes are left unsharded."""
  def fit(box):
    if not isinstance(box, nn.Partitioned):
      return box
    if box.value.ndim != len(box.names):
      return box.value
    return box.replace(names=tuple(None if size == 1 else name
                                   for size, name in zip(box.value.shape, box.names)))

  return jax.tree_util.tree_map(fit, opt_state, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def _strip_boxes(tree: Any) -> Any:
  """Removes partitioning boxes without adding sharding constraints (safe outside jit)."""
  return jax.tree_util.tree_map(
      lambda x: x.value if isinstance(x, nn.Partitioned) else x, tree,
      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def create_train_state(rng: jax.Array, model_init_fn: ModelInitFn,
                       tx: optax.GradientTransformation) -> TrainState:
  """A fresh state with plain (unboxed) arrays; meant to run under jit with out_shardings."""
  return nn.meta.unbox(_boxed_train_state(rng, model_init_fn, tx))


def abstract_train_state(rng: jax.Array, model_init_fn: ModelInitFn,
                         tx: optax.GradientTransformation) -> TrainState:
  """Shapes/dtypes of the state with partitioning boxes kept, at no compute cost."""
  return jax.eval_shape(
      functools.partial(_boxed_train_state, model_init_fn=model_init_fn, tx=tx), rng)


def state_layout(rng: jax.Array, model_init_fn: ModelInitFn, tx: optax.GradientTransformation,
                 mesh: jax.sharding.Mesh, rules: partitioning.LogicalRules) -> StateLayout:
  """Abstract state, shardings and logical specs for the state `init_sharded` would build.

  Raises:
    ValueError: from `partitioning.state_shardings` if the rules or mesh do not fit a param.
  """
  boxed = abstract_train_state(rng, model_init_fn, tx)
  shardings = partitioning.state_shardings(boxed, mesh, rules)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), _strip_boxes(boxed),
      shardings)
  return StateLayout(abstract=abstract, shardings=shardings,
                     logical_specs=partitioning.logical_specs(boxed), mesh=mesh, rules=rules)


def init_sharded(rng: jax.Array, model_init_fn: ModelInitFn, tx: optax.GradientTransformation,
                 layout: StateLayout) -> TrainState:
  """Initialises the state with every array born in its sharded layout (no host copy).

  `rng` must be the same on every process (e.g. `jax.random.key(config.train.seed)`).
  """
  init = jax.jit(functools.partial(create_train_state, model_init_fn=model_init_fn, tx=tx),
                 out_shardings=layout.shardings)
  # No mesh in context: `out_shardings` alone lays the state out. With a mesh, flax's
  # DenseGeneral would constrain its flat [in, heads*kv] init kernel with the 3-D logical spec.
  with partitioning.with_logical_rules(layout.rules):
    return init(rng)


def param_count(params: Any) -> int:
  """Number of scalars in a (possibly abstract) params tree."""
  return sum(x.size for x in jax.tree_util.tree_leaves(_strip_boxes(params)))
