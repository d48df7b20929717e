"""Device mesh, logical-axis rules, and the shardings of the train state and the batch.

This is the only module that builds a Mesh or a PartitionSpec. Models name their array axes
logically ('embed', 'mlp', 'heads', ...); the rules table in `config.logical_axis_rules` maps
those names onto the physical mesh axes ('data', 'fsdp', 'tensor'). Changing how a model is
split across devices is a config edit, never a model edit.

Typical use (the trainer):

    mesh = partitioning.make_mesh(config.mesh)
    rules = partitioning.logical_rules(config)
    partitioning.validate_batch(config.train.global_batch_size, config.train.microbatches,
                                mesh, jax.process_count())
    with partitioning.with_logical_rules(rules, mesh):
      ...  # jit calls that trace model code
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
# Every logical name a model or the trainer may use; anything else in the rules is a typo.
LOGICAL_AXES = ("batch", "length", "embed", "mlp", "heads", "kv", "vocab", "layers")
# The batch dimension of every input is split over both data-parallel axes: FSDP is data
# parallelism whose parameters happen to be sharded too.
BATCH_AXES = ("data", "fsdp")

LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def _resolve_mesh_shape(mesh_cfg: Mapping[str, Any], num_devices: int) -> tuple[int, ...]:
  """Returns (data, fsdp, tensor) sizes with a -1 replaced by the remaining devices."""
  unknown = sorted(set(mesh_cfg.keys()) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"config.mesh has unknown axes {unknown}; the mesh axes are {MESH_AXES}. "
                     "Remove them.")
  sizes = {}
  for name in MESH_AXES:
    value = mesh_cfg.get(name, 1)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
        value <= 0 and value != -1):
      raise ValueError(f"config.mesh.{name}={value!r} is not a valid axis size; use a positive "
                       "integer, or -1 for 'all remaining devices'.")
    sizes[name] = int(value)
  auto = [name for name in MESH_AXES if sizes[name] == -1]
  if len(auto) > 1:
    raise ValueError(f"config.mesh has -1 for {auto}; at most one axis may be -1. Set all but "
                     "one of them to explicit sizes.")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  described = ", ".join(f"{name}={sizes[name]}" for name in MESH_AXES)
  if auto:
    if num_devices % fixed:
      raise ValueError(f"config.mesh.{auto[0]}=-1 cannot take the remaining devices: the other "
                       f"axes ({described}) use {fixed}, which does not divide the {num_devices} "
                       f"devices. Choose sizes whose product divides {num_devices}.")
    sizes[auto[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f"config.mesh ({described}) needs {fixed} devices but {num_devices} are "
                     f"available. Make the product of the sizes equal {num_devices}, or set one "
                     "axis to -1.")
  return tuple(sizes[name] for name in MESH_AXES)


def make_mesh(mesh_cfg: Mapping[str, Any], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ('data', 'fsdp', 'tensor') mesh described by `config.mesh`.

  Args:
    mesh_cfg: `config.mesh`, with integer sizes for `data`, `fsdp`, `tensor`; one may be -1,
      meaning the devices the others leave over.
    devices: the devices to lay out; default all of `jax.devices()` (every process's).

  Returns:
    A Mesh with Auto axis types (sharding is propagated by XLA's partitioner from the in/out
    shardings and the models' logical constraints). Devices are ordered process-major, so
    `data` (the outermost axis) is the one that spans hosts; on multi-slice TPUs `data` spans
    the slices over DCN.

  Raises:
    ValueError: naming the `config.mesh` setting at fault, before anything is compiled.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = _resolve_mesh_shape(mesh_cfg, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  num_slices = len({getattr(d, "slice_index", 0) for d in devices})
  if num_slices > 1:
    if shape[0] % num_slices:
      raise ValueError(f"config.mesh.data={shape[0]} must be a multiple of the {num_slices} TPU "
                       "slices, because only data parallelism crosses the slow links between "
                       "slices. Change config.mesh.data.")
    device_array = mesh_utils.create_hybrid_device_mesh(
        (shape[0] // num_slices,) + shape[1:], (num_slices, 1, 1), devices)
    return Mesh(device_array, MESH_AXES, axis_types=axis_types)
  return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def logical_rules(config) -> LogicalRules:
  """Returns `config.logical_axis_rules` as a validated tuple of (logical name, mesh axes).

  Mesh axes of a rule are a mesh-axis name, a tuple of names, or None (replicated). A logical
  name may appear more than once: flax uses the first rule whose mesh axes are still free in
  that array, so later rules act as fallbacks.

  Raises:
    ValueError: a rule is malformed, names an unknown logical axis or an unknown mesh axis, or
      'batch' is not mapped to BATCH_AXES.
  """
  rules = []
  for rule in config.logical_axis_rules:
    if not isinstance(rule, Sequence) or isinstance(rule, str) or len(rule) != 2:
      raise ValueError(f"config.logical_axis_rules entry {rule!r} is not a (logical_name, "
                       "mesh_axes) pair; write it like ('embed', 'fsdp').")
    name, axes = rule
    if name not in LOGICAL_AXES:
      raise ValueError(f"config.logical_axis_rules names unknown logical axis {name!r}; the "
                       f"known logical axes are {LOGICAL_AXES}. Fix or remove that rule.")
    if isinstance(axes, Sequence) and not isinstance(axes, str):
      axes = tuple(axes)  # JSON round-trips and CLI overrides turn tuples into lists.
    for axis in axes if isinstance(axes, tuple) else (axes,):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f"config.logical_axis_rules maps {name!r} to unknown mesh axis "
                         f"{axis!r}; the mesh axes are {MESH_AXES} (or None to replicate).")
    rules.append((name, axes))
  # Only activations name 'batch', so no parameter check finds it missing: flax would replicate
  # them and every device would compute the whole batch (same loss, a multiple of the work).
  batch = [axes for name, axes in rules if name == "batch"]
  if not batch or batch[0] != BATCH_AXES:
    found = f"maps 'batch' to {batch[0]!r}" if batch else "has no rule for 'batch'"
    raise ValueError(f"config.logical_axis_rules {found}; the inputs are split over {BATCH_AXES} "
                     "and the activations must be too. Put ('batch', ('data', 'fsdp')) first.")
  return tuple(rules)


def _mesh_spec(box: Any, rules: LogicalRules) -> PartitionSpec:
  """The mesh PartitionSpec of one state leaf; unboxed leaves are replicated."""
  if isinstance(box, nn.LogicallyPartitioned):
    return nn.logical_to_mesh_axes(box.names, rules)
  if isinstance(box, nn.Partitioned):  # already names mesh axes
    return PartitionSpec(*box.names)
  return PartitionSpec()


# The config.model field that sizes each logical axis (for the hint of a split that cannot be).
_MODEL_FIELD = {"heads": "config.model.num_heads", "mlp": "config.model.mlp_dim",
                "embed": "config.model.hidden_size"}


def _check_leaf(path: str, box: Any, spec: PartitionSpec, mesh: Mesh, rules: LogicalRules):
  if isinstance(box, nn.LogicallyPartitioned):
    known = {name for name, _ in rules}
    for name in box.names:
      if isinstance(name, str) and name not in known:
        raise ValueError(f"{path} has logical axis {name!r}, which config.logical_axis_rules "
                         f"does not map. Add a rule such as ({name!r}, None).")
  shape = getattr(box.value if isinstance(box, nn.Partitioned) else box, "shape", ())
  names = box.names if isinstance(box, nn.Partitioned) else (None,) * len(shape)
  for dim, name, axes in zip(shape, names, spec):
    axes = axes if isinstance(axes, tuple) else (axes,)
    ways = math.prod(mesh.shape[a] for a in axes if a is not None)
    if dim % ways:
      pad = (f", or pad config.model.vocab_size={dim} up to a multiple of {ways} (e.g. "
             f"{-(-dim // 128) * 128}: the extra ids are never targets, as in nanoGPT's 50257 -> "
             "50304)") if name == "vocab" else (
                 f", or set {_MODEL_FIELD[name]} to a multiple of {ways}"
                 if name in _MODEL_FIELD else "")
      raise ValueError(f"{path} has shape {tuple(shape)}: its axis {name!r} of size {dim} cannot "
                       f"be split {ways} ways over mesh axes {axes} (config.mesh "
                       f"{dict(mesh.shape)}). Change config.mesh, or map {name!r} to None in "
                       f"config.logical_axis_rules{pad}.")


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def state_shardings(abstract_state: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """NamedShardings for every leaf of a (usually `jax.eval_shape`d) boxed train state.

  Leaves boxed in `nn.LogicallyPartitioned` are laid out by `rules`, `nn.Partitioned` leaves by
  their mesh-axis names, and unboxed leaves (step counters, scalars) are replicated. Optimizer
  moments initialised from boxed params carry the same boxes, so they get the params' layout.

  Returns:
    A pytree with the structure of the *unboxed* state, one NamedSharding per array.

  Raises:
    ValueError: a logical axis the rules do not map, or a dimension the mesh cannot divide.
  """
  def leaf_sharding(path, box):
    spec = _mesh_spec(box, rules)
    _check_leaf("/".join(_key_name(k) for k in path), box, spec, mesh, rules)
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(
      leaf_sharding, abstract_state, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def logical_specs(abstract_state: Any) -> Any:
  """PartitionSpecs of logical axis names per leaf (unboxed leaves: PartitionSpec()).

  Independent of the mesh, so it is what to keep for restoring a checkpoint onto a new mesh.
  """
  return nn.get_partition_spec(abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of every input batch: leading (batch) dim over ('data', 'fsdp'), rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays every device holds whole (rngs, scalar metrics)."""
  return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
  """Number of ways the batch is split: mesh size of 'data' x 'fsdp'."""
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def validate_batch(global_batch_size: int, microbatches: int, mesh: Mesh,
                   process_count: int) -> None:
  """Checks the batch can be split over processes, data-parallel devices and microbatches.

  Raises:
    ValueError: naming `config.train.global_batch_size` / `config.train.microbatches`, the
      values and the fix, before anything is compiled.
  """
  dp = data_parallel_size(mesh)
  if global_batch_size <= 0:
    raise ValueError(f"config.train.global_batch_size={global_batch_size} must be positive.")
  if microbatches < 1:
    raise ValueError(f"config.train.microbatches={microbatches} must be >= 1 (1 = no gradient "
                     "accumulation).")
  if global_batch_size % dp:
    raise ValueError(f"config.train.global_batch_size={global_batch_size} is not divisible by "
                     f"the {dp} data-parallel devices (config.mesh data x fsdp = "
                     f"{mesh.shape['data']} x {mesh.shape['fsdp']}). Use a multiple of {dp}.")
  if global_batch_size % process_count:
    raise ValueError(f"config.train.global_batch_size={global_batch_size} is not divisible by "
                     f"the {process_count} processes, each of which loads an equal share. Use a "
                     f"multiple of {process_count}.")
  if global_batch_size % microbatches or (global_batch_size // microbatches) % dp:
    raise ValueError(f"config.train.global_batch_size={global_batch_size} split into "
                     f"config.train.microbatches={microbatches} must give microbatches whose "
                     f"size is a multiple of the {dp} data-parallel devices. Make "
                     f"global_batch_size a multiple of microbatches x {dp} = "
                     f"{microbatches * dp}, or lower microbatches.")


@contextlib.contextmanager
def with_logical_rules(rules: LogicalRules, mesh: Mesh | None = None) -> Iterator[None]:
  """Context in which model code traced by jit sees the rules (and, if given, the mesh).

  Inside it, `nn.with_logical_constraint` and boxed-param unboxing become sharding constraints
  on `mesh`; without a mesh they are no-ops. `jax.set_mesh` may only be entered outside jit, so
  wrap the *calls* of jitted functions (tracing happens on the first call), not their bodies.
  """
  with nn.logical_axis_rules(rules):
    if mesh is None:
      yield
    else:
      with jax.set_mesh(mesh):
        yield
