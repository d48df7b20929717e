"""Orbax checkpoints of a run: `{state, data_iter, config}` under `<workdir>/checkpoints/<step>/`.

    manager = checkpointing.make_manager(workdir, config.train)
    checkpointing.save(manager, step, state, data_iter, config)          # returns at once
    state = checkpointing.restore(manager, manager.latest_step(), layout.abstract,
                                  layout.shardings, data_iter)

Saves are asynchronous (the train step goes on while arrays are written) and atomic (Orbax writes to
`<step>.orbax-checkpoint-tmp*` and renames it to `<step>` when every item and process is done), so
`latest_step()` never names an incomplete checkpoint, whenever the process dies. `state` restores
into the *target* shardings of the current mesh, so a checkpoint written on one mesh or device
count restores on another. The data position is saved in the blocking part of a save, i.e. at the
step being saved, not later.
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
import tensorflow as tf
from absl import logging
from etils import epath
from flax import traverse_util
from orbax.checkpoint import type_handlers

from ssl_jax import optim
from ssl_jax.data import tasks
from ssl_jax.data import vocabularies
from ssl_jax.models import config as model_config_lib

# Orbax's default "replica-parallel" save slices each replicated array across its replicas with a
# program compiled per array shape: the first save of a BERT tiny state blocked training 3.8 s,
# of 140 differently shaped arrays 47 s (vs 0.08 s without; benchmarks/checkpoint.py). Each
# shard is written once by its first replica instead.
type_handlers.register_type_handler(
    jax.Array, type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves and restores the input pipeline's position (one tf.data iterator checkpoint a process).

  A synchronous handler: Orbax runs it inside `manager.save(...)`, before that call returns, so the
  position saved is the one of the step being saved.
  """

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


def log_spaced_steps(num_steps: int) -> list[int]:
  """Steps 1, 2, 4, 8, ... up to `num_steps`: checkpoints for training-dynamics probes."""
  return [2**i for i in range(num_steps.bit_length()) if 2**i <= num_steps]


def make_manager(workdir: str, train_cfg: ml_collections.ConfigDict, *,
                 enable_async: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
  """A manager of `<workdir>/checkpoints` that saves every `train.save_every` steps (plus steps
  1, 2, 4, ... with `train.log_spaced_checkpoints`) and keeps the latest `train.keep_checkpoints`
  checkpoints plus every log-spaced one. Saves are asynchronous unless `enable_async=False`.

  Incomplete checkpoints a killed run left behind (`<step>.orbax-checkpoint-tmp*`) are deleted when
  the manager is created; `latest_step()` never counts them. Readers of a workdir that a run may
  be writing (eval, probes, fine-tuning from it) pass `read_only=True`: such a manager deletes
  and creates nothing, so it cannot remove the run's save in progress.
  """
  policies = [ocp.checkpoint_managers.FixedIntervalPolicy(train_cfg.save_every)]
  preserve = [ocp.checkpoint_managers.LatestN(train_cfg.keep_checkpoints)]
  if train_cfg.log_spaced_checkpoints:
    steps = log_spaced_steps(train_cfg.num_steps)
    policies.append(ocp.checkpoint_managers.SpecificStepsPolicy(steps))
    preserve.append(ocp.checkpoint_managers.CustomSteps(steps))
  options = ocp.CheckpointManagerOptions(
      save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(policies),
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(preserve),
      enable_async_checkpointing=enable_async and not read_only,
      cleanup_tmp_directories=not read_only,
      create=not read_only,
      read_only=read_only,
      save_interval_steps=0 if read_only else 1,  # unused (the policies decide); 0 is quiet
  )
  workdir = os.fspath(workdir)
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)   # Orbax refuses relative paths (at the first save)
  return ocp.CheckpointManager(
      epath.Path(workdir) / "checkpoints", options=options,
      item_names=("state", "data_iter", "config"),
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data_iter": DataIteratorHandler(),
                     "config": ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state, data_iter, config, force=False) -> bool:
  """Starts an asynchronous save of the state, the data position and the config; returns whether
  a save was started (the manager's policy decides unless `force`).

  Returns once the arrays are copied off the devices and the data position is written, so the
  caller may donate `state` and advance `data_iter` right after.
  """
  return manager.save(step, force=force, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data_iter=DataIteratorSave(data_iter),
      config=ocp.args.JsonSave(config_record(config))))


def config_record(config) -> dict:
  """`config` as a run records it (config.json and each checkpoint's config), with
  data.vocab.fingerprint, the hash of its vocabulary's pieces: the config names the vocabulary
  file only, and a file replaced later is then refused (`vocabularies.get_vocabulary`), not read
  as the run's."""
  record = json.loads(config.to_json_best_effort())
  vocab = record.get("data", {}).get("vocab")
  if vocab is not None:
    recorded = vocabularies.fingerprint(vocabularies.get_vocabulary(config.data.vocab))
    if recorded:
      vocab["fingerprint"] = recorded
  return record


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, state_shardings,
            data_iter=None):
  """Restores `step` into the target shardings (any mesh) and, if given, moves `data_iter` to
  its position; returns the state."""
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
      state_shardings)
  items = {"state": ocp.args.StandardRestore(target)}
  if data_iter is not None:
    items["data_iter"] = DataIteratorRestore(data_iter)
  return manager.restore(step, args=ocp.args.Composite(**items)).state


def restore_config(manager: ocp.CheckpointManager, step: int) -> dict:
  """The config a checkpoint was written with (as a plain dict)."""
  return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config


def workdir_config(workdir: str) -> dict | None:
  """The config.json in `workdir` (None if there is none; a file that is not a JSON object reads
  as {})."""
  path = os.path.join(workdir, "config.json")
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path) as f:
      config = json.load(f)
  except (ValueError, UnicodeDecodeError):
    return {}
  return config if isinstance(config, dict) else {}


def run_config(workdir: str, flag: str = "--workdir") -> ml_collections.ConfigDict:
  """The config of the `ssl-jax train` run in `workdir`, from its config.json (`flag` names the
  setting that gave `workdir`, for the errors: a missing file, another program's config.json)."""
  return as_run_config(workdir_config(workdir), workdir, flag)


def as_run_config(saved: dict | None, workdir: str,
                  flag: str = "--workdir") -> ml_collections.ConfigDict:
  """`run_config` of the config.json `workdir_config` read from `workdir` (`saved`), for a
  caller that reads it for another check too: on gs:// each read is a round trip."""
  if saved is None:
    raise FileNotFoundError(f"{flag}={workdir!r} has no config.json; pass the --workdir of an "
                            "`ssl-jax train` run.")
  if "objective" not in saved or "in_context" in saved:
    hint = f" (a Hugging Face directory: --init hf:{workdir})" if flag == "--init" else ""
    raise ValueError(
        f"{flag}={workdir!r}: its config.json is not an `ssl-jax train` run's (a Hugging Face "
        "model directory's, or another command's output); pass the --workdir of an "
        f"`ssl-jax train` run{hint}.")
  config = ml_collections.ConfigDict(saved)
  # JSON turned the rules' tuples into lists; flax wants tuples.
  config.logical_axis_rules = tuple(
      (name, tuple(axes) if isinstance(axes, list) else axes)
      for name, axes in config.logical_axis_rules)
  return config


def refuse_fine_tuning_run(workdir: str, saved: dict | None, command: str, instead: str) -> None:
  """Raises if `workdir` holds a fine-tuning run (`saved`, its config.json as `workdir_config`
  read it, has a finetune section), which `ssl-jax {command}` does not read; `instead` says what
  to do."""
  if saved is not None and "finetune" in saved:
    raise ValueError(
        f"--workdir={workdir!r} holds a fine-tuning run (objective {saved.get('objective')!r}, "
        f"--init {saved['finetune'].get('init')!r}); `ssl-jax {command}` reads pretraining runs: "
        f"{instead}")


def check_compatible(manager: ocp.CheckpointManager, step: int, config, layout, *,
                     resume: bool = False, evaluate: bool = False) -> None:
  """Raises if checkpoint `step` cannot be the start of this run: the vocabulary differs, a
  parameter is missing on one side or has another shape (naming its path and both shapes), or a
  config.model field other than the `RUN_FIELDS` (dtype, dropout, ...) differs, so that the same
  parameters would compute another function (pre_norm, activation, layer_norm_eps, ...). With
  `resume` (the whole state will be restored, not only the params), also if the objective or
  the optimizer state's tree differs, naming the config.optim fields that differ, or if the run
  kept log-spaced checkpoints and this config would delete them. With `evaluate`
  (`ssl-jax eval` appends its row to the run's metrics.jsonl), also if the objective differs, and
  it warns if the eval set differs from the run's."""
  saved = restore_config(manager, step)
  family, saved_family = config.model.get("family"), saved["model"].get("family")
  if family != saved_family:   # before the parameters: every one of them would differ
    raise ValueError(
        f"config.model.family={family!r} (the checkpoint's: {saved_family!r}): the checkpoint at "
        f"step {step} in {manager.directory} holds a {saved_family} model, trained with "
        f"objective {saved['objective']!r}; use a config of that family (configs/"
        f"{saved_family}.py), or a fresh --workdir for this one.")
  saved_vocab = dict(saved["data"]["vocab"])
  vocab = json.loads(config.data.vocab.to_json_best_effort())
  recorded = saved_vocab.pop("fingerprint", None)   # recorded since 2026-12-01
  vocab.pop("fingerprint", None)
  if saved_vocab != vocab:
    raise ValueError(
        f"the checkpoint at step {step} in {manager.directory} was trained with "
        f"config.data.vocab={saved_vocab}, this run has {vocab}; token ids would mean other "
        "words. Use the checkpoint's vocabulary, or a fresh --workdir.")
  vocabularies.get_vocabulary({**vocab, "fingerprint": recorded})   # raises if the file changed
  metadata = manager.item_metadata(step)["state"]
  saved_shapes = _leaf_shapes(metadata["params"])
  shapes = _leaf_shapes(layout.abstract.params)
  for path in sorted(saved_shapes.keys() | shapes.keys()):
    if path not in saved_shapes or path not in shapes:
      where, other = ("this config's model", "the checkpoint") if path in shapes else (
          "the checkpoint", "this config's model")
      problem = (f"parameter {path} is in {where} but not in {other} (step {step} in "
                 f"{manager.directory}): config.model differs from the checkpoint's model")
    elif saved_shapes[path] != shapes[path]:
      problem = (f"parameter {path} has shape {saved_shapes[path]} in the checkpoint at step "
                 f"{step} in {manager.directory} but {shapes[path]} in this config's model")
    else:
      continue
    raise ValueError(f"{problem}; {_model_differences(saved['model'], config.model)}match "
                     "config.model to the checkpoint's config.json, or use a fresh --workdir.")
  differences = _model_differences(saved["model"], config.model,
                                   ignore=model_config_lib.RUN_FIELDS)
  if differences:
    raise ValueError(
        f"the checkpoint at step {step} in {manager.directory} was trained with another model: "
        f"{differences}its parameters would compute another function here. Match "
        "config.model to the checkpoint's config.json, or use a fresh --workdir (a resumed run "
        f"may change only config.model.{{{','.join(model_config_lib.RUN_FIELDS)}}}).")
  checkpoint = f"the checkpoint at step {step} in {manager.directory}"
  # Span corruption and denoising train the same models.
  if (resume or evaluate) and saved["objective"] != config.objective:
    consequence = ("the run would resume its data stream" if resume else
                   "its eval row would go into the run's metrics.jsonl beside the other objective's")
    raise ValueError(
        f"config.objective={config.objective!r} (the checkpoint's: {saved['objective']!r}): "
        f"{checkpoint} was trained with another objective; {consequence}. Set "
        f"config.objective={saved['objective']!r}, or use a fresh --workdir.")
  if evaluate:
    _warn_other_eval_set(saved, config, checkpoint)
  if resume:
    _check_state_tree(metadata, layout.abstract, saved["optim"], config.optim, checkpoint)
    _check_same_stream(saved, config, checkpoint)
    _check_same_seeds(saved, config, checkpoint)
    _check_same_init(saved, config, checkpoint)
    _check_keeps_log_spaced(saved, config.train, manager.all_steps(), checkpoint)
    _warn_stretched_schedule(saved, config, step)


def _warn_stretched_schedule(saved: dict, config, step: int) -> None:
  """Warns when a resumed run's num_steps moves the end of a decaying learning rate: the run
  then differs from one trained with those steps from the start (allowed: extending a run)."""
  saved_steps = saved.get("train", {}).get("num_steps", config.train.num_steps)
  if (saved_steps == config.train.num_steps or step >= config.train.num_steps  # nothing to train
      or config.optim.schedule not in ("linear", "cosine")):
    return
  # The checkpoint's schedule is its own optim settings' (a resumed run may change warmup_steps).
  saved_optim = ml_collections.ConfigDict({**config.optim.to_dict(), **saved.get("optim", {})})
  now = float(optim.make_schedule(config.optim, config.train.num_steps)(step))
  before = float(optim.make_schedule(saved_optim, saved_steps)(step))
  logging.warning(
      "config.train.num_steps=%d (the checkpoint's: %d): the %s learning-rate decay now ends at "
      "step %d, so the step after %d trains at %.3g where the checkpoint's schedule gave %.3g; "
      "the run will differ from one of %d steps from the start.", config.train.num_steps,
      saved_steps, config.optim.schedule, config.train.num_steps, step, now, before,
      config.train.num_steps)


def _check_keeps_log_spaced(saved: dict, train_cfg, steps, checkpoint: str) -> None:
  """Raises if a run that kept log-spaced checkpoints resumes without them: the manager would
  delete the old ones (1, 2, 4, ...: a training-dynamics study's) as it saves new ones."""
  saved_train = saved.get("train", {})
  if not saved_train.get("log_spaced_checkpoints") or train_cfg.log_spaced_checkpoints:
    return
  latest = sorted(steps)[-train_cfg.keep_checkpoints:]
  doomed = sorted(set(steps) & set(log_spaced_steps(saved_train["num_steps"])) - set(latest))
  if doomed:
    raise ValueError(
        f"config.train.log_spaced_checkpoints=False, but {checkpoint} belongs to a run that keeps "
        f"log-spaced checkpoints: resuming would delete those at steps {doomed} as new ones are "
        "saved. Set config.train.log_spaced_checkpoints=True (as in its config.json), or move "
        "them out of the workdir first.")


def _check_same_stream(saved: dict, config, checkpoint: str) -> None:
  """Raises if a pretraining run resumes with data settings that change its batch stream
  (`tasks.stream_settings`: the source, its files or corpus, the seed, the objective's corruption,
  ...): the restored tf.data position would go on with the old stream, then fail inside tf.data
  or switch to the new one many steps later. Fields the checkpoint's config lacks are not
  compared."""
  differences = _stream_differences(saved, config)
  if differences:
    why = ("its state was trained on the checkpoint's task and rows" if "finetune" in config else
           "its saved data position belongs to the checkpoint's stream")
    raise ValueError(
        f"{checkpoint} was trained on another data stream: {differences}{why}. Resume with the "
        "checkpoint's data settings (its config.json), or use a fresh --workdir.")


def _check_same_seeds(saved: dict, config, checkpoint: str) -> None:
  """Raises if a resume changes config.train.seed (the params' init and the dropout stream), or,
  for fine-tuning, config.data.seed (its row order; pretraining compares it with the stream): the
  run would go on under another random stream, matching no uninterrupted run, and config.json
  would record a seed it did not start with."""
  differences = _differences("train", {"seed": config.train.seed},
                             {"seed": saved["train"].get("seed", config.train.seed)})
  if config.objective not in tasks.OBJECTIVES:
    ours = config.data.get("seed", 0)
    differences += _differences("data", {"seed": ours}, {"seed": saved["data"].get("seed", ours)})
  if differences:
    raise ValueError(
        f"{checkpoint} was trained with other seeds: {differences}a resume would go on under "
        "another random stream than the one its state comes from. Resume with the checkpoint's "
        "seeds (its config.json), or use a fresh --workdir for the new ones.")


# The settings that pick a fine-tuning run's training rows (text-to-text's too). The eval side
# (eval_file, eval_split, max_eval_examples) may change: a finished run scores another set.
_FINETUNE_TRAIN_DATA = ("task", "format", "train_file", "train_split", "tfds_data_dir", "labels",
                        "tag_column", "max_train_examples", "sequence_length")


def _stream_differences(saved: dict, config) -> str:
  """`_differences` of the data settings that make a pretraining run's batch stream, or pick a
  fine-tuning run's training rows (fields the checkpoint's config lacks are not compared)."""
  if "finetune" in config:
    keys = [k for k in _FINETUNE_TRAIN_DATA if k in config.data and k in saved.get("data", {})]
    return _differences("data", {k: config.data[k] for k in keys},
                        {k: saved["data"][k] for k in keys})
  ours, theirs = (traverse_util.flatten_dict(tasks.stream_settings(c), sep=".")
                  for c in (config, ml_collections.ConfigDict(saved)))
  compared = ours.keys() & theirs.keys()
  return _differences("data", {k: ours[k] for k in compared}, {k: theirs[k] for k in compared})


def _warn_other_eval_set(saved: dict, config, checkpoint: str) -> None:
  """Warns if `ssl-jax eval`'s config reads other eval batches than the run's own eval rows did
  (its row goes into the run's metrics.jsonl beside them)."""
  train = {k: config.train[k] for k in ("global_batch_size", "eval_steps")}
  differences = _stream_differences(saved, config) + _differences(
      "train", train, {k: saved["train"].get(k) for k in train})
  if differences:
    logging.warning(
        "%s was trained with other eval settings: %sthis eval row scores other examples than the "
        "run's own eval rows. To compare with them, pass the run's settings (its config.json).",
        checkpoint, differences)


def _check_same_init(saved: dict, config, checkpoint: str) -> None:
  """Raises if a fine-tuning run resumes (or re-scores) from another --init than it started
  from, e.g. an eval-suite re-run after more pretraining: its scores would belong to the old
  model under the new model's name."""
  if "finetune" not in config or "finetune" not in saved:
    return
  def where(init):
    if init == "none":
      return init
    prefix = "hf:" if init.startswith("hf:") else ""
    return prefix + os.path.abspath(init[len(prefix):])
  theirs = saved["finetune"].get("init", "none"), saved["finetune"].get("init_step")
  ours = config.finetune.init, config.finetune.get("init_step")
  if where(theirs[0]) != where(ours[0]) or (theirs[1] is not None and theirs[1] != ours[1]):
    raise ValueError(
        f"{checkpoint} was fine-tuned from --init={theirs[0]} (checkpoint step {theirs[1]}), "
        f"but this run's --init is {ours[0]} (checkpoint step {ours[1]}): its scores would "
        "belong to the other model. Use a fresh --workdir for this --init, or pass the one the "
        "workdir was fine-tuned from.")


def _check_state_tree(metadata, abstract_state, saved_optim: dict, optim, checkpoint: str) -> None:
  """Raises if the checkpoint's state (its Orbax `metadata`) has other leaves than
  `abstract_state` (the parameters matched already, so the optimizer's state differs)."""
  saved, wanted = set(_leaf_shapes(metadata)), set(_leaf_shapes(abstract_state))
  if saved == wanted:
    return
  path, where = (min(saved - wanted), "the checkpoint") if saved - wanted else (
      min(wanted - saved), "this run's state")
  differences = _differences("optim", json.loads(optim.to_json_best_effort()), saved_optim)
  raise ValueError(
      f"the optimizer state of {checkpoint} has another tree than this run's ({path} is only in "
      f"{where}); "
      f"{differences or 'it was written by another version of ssl_jax; '}resume with the "
      "optimizer it was written with, or use a fresh --workdir.")


def _model_differences(saved_model: dict, model, ignore=()) -> str:
  """'config.model.x=1 (the checkpoint's: 2); ' for each field not in `ignore` that differs (a
  field the checkpoint's config.json lacks counts as its default), or ''."""
  ours, theirs = (_with_defaults(m) for m in (json.loads(model.to_json_best_effort()), saved_model))
  return _differences("model", ours, theirs, ignore)


def _differences(section: str, ours: dict, theirs: dict, ignore=()) -> str:
  """'config.<section>.x=1 (the checkpoint's: 2); ' for each field not in `ignore` that differs."""
  return "".join(
      f"config.{section}.{key}={ours.get(key)!r} (the checkpoint's: {theirs.get(key)!r}); "
      for key in sorted(ours.keys() | theirs.keys())
      if key not in ignore and ours.get(key) != theirs.get(key))


def _with_defaults(model: dict) -> dict:
  """config.model as a dict with every field of its family (defaults for those it lacks)."""
  family = {"family": model.get("family")}
  return {**model_config_lib.config_to_dict(model_config_lib.config_from_dict(family)), **model}


def _leaf_shapes(tree) -> dict[str, tuple]:
  """{'bert/encoder/layers_0/mlp/wi/kernel': shape} of a tree of arrays or of Orbax metadata
  (dict keys, sequence indices and attribute names alike)."""
  def name(key):
    return str(next(getattr(key, a) for a in ("key", "idx", "name") if hasattr(key, a)))

  return {"/".join(map(name, path)): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class Preempted(Exception):
  """A SIGTERM stopped training after its checkpoint was saved. Raised past the callers that
  would go on (fine-tuning scores, the eval suite's next task); `ssl-jax` logs it and exits 0,
  and re-running the same command resumes."""

  def __init__(self, step: int):
    super().__init__(f"preempted (SIGTERM): stopped at step {step}, after saving its checkpoint; "
                     "re-run the same command to continue from there.")
    self.step = step


@contextlib.contextmanager
def preemption_guard():
  """Yields `preempted(step) -> bool`: whether to save at `step` and stop; call it every step.

  With JAX's distributed runtime (several processes): its preemption sync point -- the runtime
  catches SIGTERM itself and picks a step every process reaches, so all save the same step.
  Otherwise: True once SIGTERM has arrived (the handler only sets a flag; the loop saves).
  """
  if jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service:
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
  """Only the params of checkpoint `step`, in the target shardings (for eval, probes, finetuning);
  the optimizer state is not read."""
  target = {"params": layout.abstract.params}
  # StandardRestore has no partial restore; the PyTree handler reads the same on-disk format.
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(
        manager.directory / str(step) / "state", args=ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
  return restored["params"]
