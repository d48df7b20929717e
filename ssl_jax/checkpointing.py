"""Orbax checkpoints of a run: `{state, data_iter, config}` under `<workdir>/checkpoints/<step>/`.

Saves are asynchronous (the train step goes on while arrays are written) and atomic (Orbax writes to
a temporary directory and renames it when every item and process is done), so `latest_step()` never
names an incomplete checkpoint. `state` restores into the *target* shardings of the current mesh, so a
checkpoint written on one mesh or device count restores on another.
"""
import contextlib
import dataclasses
import json
import os
import signal
import threading
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath


class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves and restores the input pipeline's position (one tf.data iterator checkpoint a process)."""

  def save(self, directory: epath.Path, args: "DataIteratorSave"):
    args.iterator.save(directory)

  def restore(self, directory: epath.Path, args: "DataIteratorRestore"):
    args.iterator.restore(directory)
    return args.iterator


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: Any


def make_manager(workdir: str, train_cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """A manager that saves every `save_every` steps (plus steps 1, 2, 4, ... with
  `log_spaced_checkpoints`, for training-dynamics probes) and keeps the last `keep_checkpoints`
  of the periodic ones (log-spaced ones are always kept)."""
  policies = [ocp.checkpoint_managers.FixedIntervalPolicy(train_cfg.save_every)]
  preserve = [ocp.checkpoint_managers.LatestN(train_cfg.keep_checkpoints)]
  if train_cfg.log_spaced_checkpoints:
    steps = [2**i for i in range(64) if 2**i <= train_cfg.num_steps]
    policies.append(ocp.checkpoint_managers.SpecificStepsPolicy(steps))
    preserve.append(ocp.checkpoint_managers.CustomSteps(steps))
  options = ocp.CheckpointManagerOptions(
      save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(policies),
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(preserve),
      enable_async_checkpointing=True,
      cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(
      epath.Path(workdir) / "checkpoints", options=options,
      item_names=("state", "data_iter", "config"),
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data_iter": DataIteratorHandler(),
                     "config": ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state, data_iter, config, force=False) -> bool:
  """Starts an asynchronous save of the state, the data position and the config; returns whether
  a save was started (the manager's policy decides unless `force`)."""
  return manager.save(step, force=force, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data_iter=DataIteratorSave(data_iter),
      config=ocp.args.JsonSave(json.loads(config.to_json_best_effort()))))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, state_shardings, data_iter):
  """Restores `step` into the target shardings (any mesh) and moves `data_iter` to its position."""
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
      state_shardings)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), data_iter=DataIteratorRestore(data_iter)))
  return restored.state


def restore_config(manager: ocp.CheckpointManager, step: int) -> dict:
  """The config a checkpoint was written with (as a plain dict)."""
  return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config


def check_workdir(workdir: str) -> None:
  """Raises before any compile if `workdir` cannot be created or written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(
        f"--workdir={workdir!r} is not writable ({e.strerror}); pass a directory you can write "
        "to (checkpoints, metrics.jsonl and config.json go there).") from e


def check_compatible(manager: ocp.CheckpointManager, step: int, config, layout) -> None:
  """Raises if checkpoint `step` cannot be the start of this run: a parameter's shape differs
  (naming its path and both shapes) or the vocabulary differs."""
  saved = restore_config(manager, step)
  saved_vocab = dict(saved["data"]["vocab"])
  vocab = json.loads(config.data.vocab.to_json_best_effort())
  if saved_vocab != vocab:
    raise ValueError(
        f"the checkpoint at step {step} in {manager.directory} was trained with "
        f"config.data.vocab={saved_vocab}, this run has {vocab}; token ids would mean other "
        "words. Use the checkpoint's vocabulary, or a fresh --workdir.")
  metadata = manager.item_metadata(step)["state"]
  saved_shapes = {jax.tree_util.keystr(p): tuple(m.shape) for p, m in
                  jax.tree_util.tree_flatten_with_path(metadata)[0] if hasattr(m, "shape")}
  for path, leaf in jax.tree_util.tree_flatten_with_path(layout.abstract)[0]:
    key = jax.tree_util.keystr(path)
    if key not in saved_shapes:
      raise ValueError(
          f"the checkpoint at step {step} in {manager.directory} has no parameter {key}, which "
          "this config's model needs; the model config differs from the checkpoint's "
          "(see its config.json). Match config.model to it, or use a fresh --workdir.")
    if saved_shapes[key] != tuple(leaf.shape):
      raise ValueError(
          f"parameter {key} has shape {saved_shapes[key]} in the checkpoint at step {step} in "
          f"{manager.directory} but {tuple(leaf.shape)} in this config's model; match "
          "config.model to the checkpoint's config.json, or use a fresh --workdir.")


@contextlib.contextmanager
def preemption_guard():
  """Yields `preempted(step) -> bool`: whether to save at `step` and stop.

  One process: True once SIGTERM has arrived. Several processes: JAX's preemption sync point
  (the distributed runtime catches SIGTERM itself), so every process saves at the same step.
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    yield multihost_utils.reached_preemption_sync_point
    return
  received = threading.Event()
  previous = signal.signal(signal.SIGTERM, lambda *_: received.set())
  try:
    yield lambda step: received.is_set()
  finally:
    signal.signal(signal.SIGTERM, previous)


def restore_params(manager: ocp.CheckpointManager, step: int, layout):
  """Only the params of checkpoint `step`, in the target shardings (for eval, probes, finetuning)."""
  target = {"params": layout.abstract.params}
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target, strict=False)))
  return restored.state["params"]
