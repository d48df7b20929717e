"""The objective-agnostic trainer: sharded init, jitted train and eval steps, and the loop.

    state = trainer.train_and_evaluate(config, workdir)

Everything a user can get wrong is checked in `Experiment.build` before anything is compiled. The
train step is compiled once, ahead of time, with the state donated; its rng is
`fold_in(seed, step)`, so a resumed run draws exactly the numbers an uninterrupted one does.
"""
import copy
import dataclasses
import functools
import json
import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssl_jax import checkpointing
from ssl_jax import config as config_lib
from ssl_jax import distributed
from ssl_jax import metrics as metrics_lib
from ssl_jax import objectives
from ssl_jax import optim
from ssl_jax import partitioning
from ssl_jax import train_state as train_state_lib
from ssl_jax import workdir as workdir_lib
from ssl_jax.data import pipeline
from ssl_jax.data import shards
from ssl_jax.data import tasks
from ssl_jax.data import vocabularies
from ssl_jax.models import dense


class NonFiniteLossError(RuntimeError):
  """Raised (and the process exits non-zero) when `train.on_nonfinite='abort'` sees a bad step."""


def resolve_model_config(config: ml_collections.ConfigDict):
  """The model dataclass for `config`, with `vocab_size=-1` taken from the data vocabulary."""
  model_cfg = config_lib.validate(config)
  vocab = vocabularies.get_vocabulary(config.data.vocab)
  if model_cfg.vocab_size == -1:
    # Rounded up so the vocabulary axis shards evenly and matmuls stay aligned.
    model_cfg = dataclasses.replace(model_cfg, vocab_size=-(-vocab.vocab_size // 128) * 128)
  elif model_cfg.vocab_size < vocab.vocab_size:
    extra = int(config.data.vocab.get("extra_ids", 0) or 0)
    sentinels = (f" {extra} of them are config.data.vocab.extra_ids, T5's sentinels, which only "
                 "span corruption uses: set extra_ids=0, or"
                 if extra and config.objective != "span_corruption" else "")
    raise ValueError(
        f"config.model.vocab_size={model_cfg.vocab_size} is smaller than the data vocabulary "
        f"({vocab.vocab_size} ids from config.data.vocab);{sentinels} set "
        "config.model.vocab_size=-1 to take the vocabulary's size, or a larger value.")
  return model_cfg


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before the first compile."""
  config: ml_collections.ConfigDict
  objective: objectives.Objective
  model_config: Any
  model: Any
  tx: Any
  schedule: Any
  batch_spec: dict
  batch_sharding: jax.sharding.NamedSharding
  layout: train_state_lib.StateLayout

  @property
  def mesh(self):
    return self.layout.mesh

  @classmethod
  def build(cls, config: ml_collections.ConfigDict, devices=None) -> "Experiment":
    """Validates `config` against itself, the devices and the data, and lays out the state
    (on `devices`, default all)."""
    model_cfg = resolve_model_config(config)
    mesh = partitioning.make_mesh(config.mesh, devices)
    rules = partitioning.logical_rules(config)
    partitioning.validate_batch(config.train.global_batch_size, config.train.microbatches, mesh,
                                jax.process_count())
    objective = objectives.get(config.objective, config)
    model = objective.make_model(model_cfg)
    tx, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
    batch_spec = pipeline.batch_spec(config)
    layout = train_state_lib.state_layout(
        jax.random.key(config.train.seed), functools.partial(_init_params, objective, model,
                                                             batch_spec), tx, mesh, rules)
    return cls(config, objective, model_cfg, model, tx, schedule, batch_spec,
               partitioning.batch_sharding(mesh), layout)

  def init_state(self):
    """A fresh train state, every array created in its sharded layout."""
    return train_state_lib.init_sharded(jax.random.key(self.config.train.seed),
                                        self.model_init_fn, self.tx, self.layout)

  @property
  def model_init_fn(self):
    """`rng -> params`, the model's initial parameters (with their partitioning boxes)."""
    return functools.partial(_init_params, self.objective, self.model, self.batch_spec)


def _init_params(objective, model, batch_spec, rng):
  dummy = {k: jnp.zeros(v.shape, v.dtype) for k, v in batch_spec.items()}
  return objectives.init_params(objective, model, rng, dummy)


def _microbatched(batch, k: int):
  """[B, ...] -> [k, B/k, ...], microbatch i holding rows i, i+k, ... so that every device's shard
  of the batch contributes equally to every microbatch (no resharding inside the scan)."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)


def _add(a, b):
  return jax.tree.map(jnp.add, a, b)


def _summed_over_microbatches(fn, batch, k: int):
  """`fn(microbatch, i)` summed over the k microbatches of `batch` (`lax.scan`: one microbatch's
  activations live at a time); `fn(batch, None)` when k == 1."""
  if k == 1:
    return fn(batch, None)
  microbatches = _microbatched(batch, k)
  shapes = jax.eval_shape(fn, jax.tree.map(lambda x: x[0], microbatches), 0)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def accumulate(total, xs):
    i, microbatch = xs
    return _add(total, fn(microbatch, i)), None

  return jax.lax.scan(accumulate, zeros, (jnp.arange(k), microbatches))[0]


def make_train_step(exp: Experiment):
  """The train step `(state, batch) -> (state, metric_sums)`, to be jitted with donated state.

  With `train.microbatches=k` the batch is split into k microbatches whose gradients are summed
  inside the step (`lax.scan`); every loss term is divided by the whole batch's denominator, so the
  update equals that of one batch of B (without dropout: each microbatch draws its own masks,
  from the step's key folded with its index). A non-finite loss or gradient leaves the state
  unchanged and is counted in `nonfinite_steps`; its other metrics get count 0, so the logged
  means are those of the steps applied.
  """
  objective, model, tx = exp.objective, exp.model, exp.tx
  k = exp.config.train.microbatches
  base_rng = jax.random.key(exp.config.train.seed)

  def train_step(state, batch):
    rng = jax.random.fold_in(base_rng, state.step)
    dens = objective.denominators(batch)

    def grads_of(microbatch, i):
      grad_fn = jax.value_and_grad(
          functools.partial(objectives.loss_fn, objective, model), has_aux=True)
      (loss, sums), grads = grad_fn(state.params, microbatch,
                                    rng if i is None else jax.random.fold_in(rng, i), dens)
      return loss, sums, grads

    loss, sums, grads = _summed_over_microbatches(grads_of, batch, k)
    # Logged, before clipping, and clipped with (one pass over the gradients, not two); finite
    # exactly when every gradient is (or its square sum overflows float32, a norm past 1e19,
    # which clipping could not have used either).
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # Skip the update on a bad step: the whole state (params, optimizer, step) stays as it was,
    # except the step counter, so the next step draws new randomness. A cond, not a select of new
    # and old: a select keeps the donated old state alive, so XLA copies all of it every step.
    new_state = jax.lax.cond(finite, lambda: state.apply_gradients(grads, tx, grad_norm=grad_norm),
                             lambda: state)
    new_state = new_state.replace(step=state.step + 1)
    sums = dict(sums)
    sums["loss"] = (loss, jnp.ones(()))
    sums["grad_norm"] = (grad_norm, jnp.ones(()))
    # A skipped step's metrics (NaN) stay out of the logged means of the steps that were applied.
    sums = {name: (jnp.where(finite, total, 0.0), jnp.where(finite, count, 0.0))
            for name, (total, count) in sums.items()}
    sums["nonfinite_steps"] = (1.0 - finite.astype(jnp.float32), jnp.ones(()))
    # The schedule step this update read (behind state.step by the steps skipped so far), for the
    # logged learning rate; not a metric to average (count 0).
    sums[metrics_lib.SCHEDULE_STEP] = (optim.update_count(state.opt_state).astype(jnp.float32),
                                       jnp.zeros(()))
    return new_state, sums

  return train_step


def make_eval_step(exp: Experiment):
  """`(params, batch) -> metric_sums` with dropout off, in `train.microbatches` microbatches as
  the train step (a run that needs them to fit in memory needs them in eval too: the whole batch's
  logits at once took k times the train step's)."""
  objective, model = exp.objective, exp.model
  k = exp.config.train.microbatches

  def eval_step(params, batch):
    dens = objective.denominators(batch)
    loss, sums = _summed_over_microbatches(
        lambda microbatch, _: objectives.loss_fn(objective, model, params, microbatch,
                                                 jax.random.key(0), dens, deterministic=True),
        batch, k)
    sums = dict(sums)
    sums["loss"] = (loss, jnp.ones(()))
    return sums

  return eval_step


def _tokens_per_step(batch_spec) -> int:
  """Token positions the model reads per step (encoder plus decoder), padding included."""
  return sum(int(np.prod(v.shape)) for k, v in batch_spec.items() if k.endswith("input_tokens"))


# XLA:CPU hands dots to YNNPACK and nothing else. With YNNPACK reductions as well, the tiny BERT
# step is 8-10% faster, but a step's sums then differ in the last bits between a process with one
# CPU device and one with several (`--xla_force_host_platform_device_count`), so a run resumed in
# the other setting would not repeat the uninterrupted one bit for bit (benchmarks/RESULTS.md).
_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def _on_cpu(mesh) -> bool:
  return mesh.devices.flat[0].platform == "cpu"


def compiler_options(mesh) -> dict:
  """XLA options for compiling a step on `mesh`'s platform."""
  return dict(_CPU_COMPILER_OPTIONS) if _on_cpu(mesh) else {}


def lower_train_step(exp: Experiment):
  """The train step lowered for the state and batch layouts (state donated), not yet compiled."""
  replicated = partitioning.replicated(exp.mesh)
  batch_abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=exp.batch_sharding)
                    for k, v in exp.batch_spec.items()}
  step = jax.jit(make_train_step(exp), in_shardings=(exp.layout.shardings, exp.batch_sharding),
                 out_shardings=(exp.layout.shardings, replicated), donate_argnums=0)
  with partitioning.with_logical_rules(exp.layout.rules, exp.mesh):
    return step.lower(exp.layout.abstract, batch_abstract)


def compile_train_step(exp: Experiment, options: Optional[dict] = None):
  """The train step compiled ahead of time for the state and batch layouts (state donated).

  `options`: XLA compiler options instead of the platform's (`compiler_options`), e.g. to compare
  flags (`benchmarks/train_step.py --compare-compiler-options`).
  """
  compiled = lower_train_step(exp).compile(
      compiler_options=compiler_options(exp.mesh) if options is None else options)
  _log_memory(compiled)
  if _on_cpu(exp.mesh) and host_allocator() == "system":
    _remind_tcmalloc()
  return compiled


@functools.cache  # once per process
def _remind_tcmalloc() -> None:
  logging.info("XLA:CPU under the system malloc maps its temporary buffers afresh and page-faults "
               "them in every step; with tcmalloc preloaded (LD_PRELOAD=<path to "
               "libtcmalloc_minimal.so.4>) CPU steps ran 7-25% faster (README, Performance)")


def compile_eval_step(exp: Experiment):
  replicated = partitioning.replicated(exp.mesh)
  step = jax.jit(make_eval_step(exp),
                 in_shardings=(exp.layout.shardings.params, exp.batch_sharding),
                 out_shardings=replicated)
  batch_abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=exp.batch_sharding)
                    for k, v in exp.batch_spec.items()}
  with partitioning.with_logical_rules(exp.layout.rules, exp.mesh):
    return step.lower(exp.layout.abstract.params, batch_abstract).compile(
        compiler_options=compiler_options(exp.mesh))


def flops_per_step(config: ml_collections.ConfigDict, devices=None) -> float:
  """FLOPs of one train step of `config` on `devices` (default all, as `Experiment.build`), all of
  them together: XLA's cost analysis of the step
  lowered with its layers unrolled (`model.scan_layers=False`) and one microbatch, as the step
  does the same arithmetic either way. Cost analysis counts a loop's body once, so the scanned
  layer stack or the microbatch loop would count 1/num_layers or 1/microbatches of the work.
  Lowered without rematerialisation (`model.remat_policy='none'`): the model's FLOPs, as MFU counts
  them; a policy's recomputed forward pass is extra work for the same step (+19% for tiny GPT with
  'full'), which would overstate the MFU.
  Traced with autodiff's dense backward (`dense.autodiff_dense`), the model's arithmetic on every
  backend: XLA:CPU's own computes bias gradients as dots with a block of ones, which cost analysis
  would count as ~1% more matmul work. Lowers only (nothing is compiled); 0 when the backend
  reports no cost analysis."""
  unrolled = copy.deepcopy(config)
  with unrolled.unlocked():
    unrolled.model.update(scan_layers=False, remat_policy="none")
    unrolled.train.microbatches = 1
  with dense.autodiff_dense():
    cost = lower_train_step(Experiment.build(unrolled, devices)).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def host_allocator() -> str:
  """This process's C heap allocator: 'tcmalloc' or 'jemalloc' when one is loaded (by LD_PRELOAD),
  else 'system'."""
  try:
    with open("/proc/self/maps") as f:
      maps = f.read()
  except OSError:  # not Linux
    return "system"
  return next((name for name in ("tcmalloc", "jemalloc") if f"lib{name}" in maps), "system")


def _log_memory(compiled) -> None:
  memory = compiled.memory_analysis()
  if memory is not None:
    logging.info("train step memory per device: arguments %.1f MiB, outputs %.1f MiB, "
                 "temporaries %.1f MiB", memory.argument_size_in_bytes / 2**20,
                 memory.output_size_in_bytes / 2**20, memory.temp_size_in_bytes / 2**20)


class EvalSet:
  """The batches every eval reads: the first `train.eval_steps` global batches of the validation
  split. They are read once and kept on the host (this process's rows, numpy: eval_steps x the
  per-process batch), so each eval sees the same examples and none rebuilds the input pipeline,
  which takes seconds. `shard_count` is the run's data shard count (its train stream's, which a
  resume keeps): the examples depend on it, not on the process count."""

  def __init__(self, exp: Experiment, shard_count: Optional[int] = None):
    it = pipeline.make_iterator(exp.config, "validation", exp.batch_sharding, shard_count)
    self._local = [it.next_local() for _ in range(exp.config.train.eval_steps)]
    self._sharding = exp.batch_sharding
    self._global_batch = int(exp.config.train.global_batch_size)

  def __iter__(self):
    return (shards.global_arrays(b, self._sharding, self._global_batch) for b in self._local)


def evaluate(eval_step, params, eval_set: EvalSet, step: int, logger, split: str = "eval") -> dict:
  """Runs `eval_step` on every batch of `eval_set` and writes one eval row (of `split`)."""
  return logger.write_eval(step, [eval_step(params, batch) for batch in eval_set], split=split)


def _raise_if_nonfinite(step: int, sums) -> None:
  if float(jax.device_get(sums["nonfinite_steps"][0])) > 0:
    raise NonFiniteLossError(
        f"step {step}: the loss or a gradient is not finite and config.train.on_nonfinite="
        "'abort'. The state was not updated and no checkpoint after this step was written. "
        "Lower config.optim.learning_rate, or set config.train.on_nonfinite='skip' to skip such "
        "steps.")


def write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    # Atomically: a cut config.json made the workdir look like another program's (refused).
    metrics_lib.write_atomically(os.path.join(workdir, "config.json"),
                                 json.dumps(checkpointing.config_record(config), indent=2) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, init_params=None, *,
                       exp=None, train_iter=None, evaluate_fn=None):
  """Trains to `config.train.num_steps`, resuming from the latest checkpoint in `workdir`.

  `init_params`, a function params -> params, edits a fresh run's initial params (fine-tuning
  puts a pretrained encoder in); a resumed run ignores it. Callers with their own data or
  evaluation (text-to-text fine-tuning) pass `exp`, `train_iter` (a checkpointable iterator of
  global batches) and `evaluate_fn(params, step, logger)`, called every `train.eval_every` steps
  and at the last; by default the config's input pipeline and `train.eval_steps` eval batches.
  A SIGTERM (preemption) saves a checkpoint and raises `checkpointing.Preempted`. The workdir is
  locked meanwhile (`workdir.lock`): a second run there is refused.
  """
  exp = exp or Experiment.build(config)
  workdir_lib.check(workdir)
  with workdir_lib.lock(workdir):
    return _resume_and_train(config, workdir, init_params, exp, train_iter, evaluate_fn)


def _resume_and_train(config, workdir, init_params, exp, train_iter, evaluate_fn):
  train_cfg = config.train
  manager = checkpointing.make_manager(workdir, train_cfg)
  latest = manager.latest_step()
  if latest is not None:
    checkpointing.check_compatible(manager, latest, config, exp.layout, resume=True)
  if train_iter is None:
    train_iter = pipeline.make_iterator(config, "train", exp.batch_sharding)
  if latest is None:
    state = exp.init_state()
    if init_params is not None:
      state = state.replace(params=init_params(state.params))
  else:
    state = checkpointing.restore(manager, latest, exp.layout.abstract, exp.layout.shardings,
                                  train_iter)
    logging.info("resumed from step %d of %s", latest, workdir)
  start = int(jax.device_get(state.step))
  if start >= train_cfg.num_steps:  # a finished run, re-run: nothing to compile or train
    logging.warning("%s is at step %d >= config.train.num_steps=%d: nothing to train (raise "
                    "num_steps to train on)", workdir, start, train_cfg.num_steps)
    manager.close()
    return state
  write_config(config, workdir)   # the config.json of the steps this run trains
  # The data is read before anything compiles, so that a missing file or a bad data setting fails
  # at once (not after minutes of compiling on a pod), and the pipeline starts while XLA compiles.
  first_batch = next(train_iter)
  if evaluate_fn is None and train_cfg.eval_steps:
    eval_set = EvalSet(exp, getattr(train_iter, "num_shards", None))
    eval_step = compile_eval_step(exp)
    evaluate_fn = lambda params, step, logger: evaluate(eval_step, params, eval_set, step, logger)
  train_step = compile_train_step(exp)
  logger = metrics_lib.MetricsLogger(
      workdir, num_steps=train_cfg.num_steps, log_every=train_cfg.log_every, start_step=start,
      tokens_per_step=_tokens_per_step(exp.batch_spec), learning_rate_fn=exp.schedule)
  with logger, checkpointing.preemption_guard() as preempted:
    try:
      return _loop(exp, state, start, train_step, evaluate_fn, first_batch, train_iter, manager,
                   logger, preempted)
    finally:
      # A save in flight completes even when the loop raised; inside the guard, so that another
      # SIGTERM (a launcher and the scheduler both signalling) cannot kill it half-written.
      manager.close()


def _loop(exp, state, start, train_step, evaluate_fn, first_batch, train_iter, manager, logger,
          preempted):
  config, train_cfg = exp.config, exp.config.train
  abort = train_cfg.on_nonfinite == "abort"
  previous = None  # (step, sums) of the step before the one in flight
  for step in range(start + 1, train_cfg.num_steps + 1):
    batch = first_batch if step == start + 1 else next(train_iter)
    if step == start + 1:  # every process has compiled and read a batch: start together
      distributed.barrier("first train step")
    state, sums = train_step(state, batch)
    logger.train_step(step, sums)
    if abort and previous is not None:
      _raise_if_nonfinite(*previous)  # one step late: the device is busy with `step`
    previous = (step, sums)
    if evaluate_fn is not None and (step % train_cfg.eval_every == 0
                                    or step == train_cfg.num_steps):
      with logger.paused(wait_for=sums):
        evaluate_fn(state.params, step, logger)
    stop = preempted(step)
    last = stop or step == train_cfg.num_steps
    if last or manager.should_save(step):
      if abort:
        _raise_if_nonfinite(step, sums)  # never checkpoint at or after a bad step
      # Rows up to `step`, the open window's too, reach metrics.jsonl before its checkpoint can
      # be final: a run killed after the checkpoint resumes at step + 1 and would never write them.
      logger.flush()
      with logger.paused():
        checkpointing.save(manager, step, state, train_iter, config, force=True)
    if stop:
      logging.warning("preempted (SIGTERM): saving a checkpoint at step %d and stopping; "
                      "re-run the same command to continue from there.", step)
      raise checkpointing.Preempted(step)   # after the save (train_and_evaluate waits for it)
    if last:
      break
  return state


def evaluate_workdir(config: ml_collections.ConfigDict | None, workdir: str) -> dict:
  """`ssl-jax eval`: evaluates the latest checkpoint in `workdir` and appends an eval row. With
  `config` None, the run's own config (its config.json: its eval set and mesh).

  The row's split is `_eval_split(config)`, not 'eval': it says what it scored, and the run's own
  eval rows stay one series (of one eval set, the run's), whatever config scored the checkpoint.
  """
  saved = checkpointing.workdir_config(workdir)   # read once: on gs:// each read is a round trip
  # A text-to-text fine-tuning trains a pretraining objective, span corruption: its config, not
  # its objective, says what it is. Its scores are eval_results.json and its last eval row.
  checkpointing.refuse_fine_tuning_run(
      workdir, saved, "eval", "its scores are its eval_results.json (re-run its `ssl-jax "
      "finetune` command to score it again).")
  if config is None:
    config = checkpointing.as_run_config(saved, workdir)
  if "finetune" in config:
    raise ValueError(f"--config is a fine-tuning config (objective {config.objective!r}); "
                     "`ssl-jax eval` scores pretraining runs: give a pretraining config, or none "
                     "to use the run's config.json (`ssl-jax finetune` scores fine-tuning).")
  if config.train.eval_steps < 1:
    raise ValueError(f"config.train.eval_steps={config.train.eval_steps}: `ssl-jax eval` scores "
                     "that many validation batches; set it to 1 or more.")
  exp = Experiment.build(config)
  manager = checkpointing.make_manager(workdir, config.train, read_only=True)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(
        f"--workdir={workdir!r} has no checkpoint to evaluate; train first with "
        f"`ssl-jax train --config ... --workdir {workdir}`.")
  checkpointing.check_compatible(manager, step, config, exp.layout, evaluate=True)
  params = checkpointing.restore_params(manager, step, exp.layout)
  positions = os.path.join(os.fspath(manager.directory), str(step), "data_iter")
  manager.close()
  # Read before compiling, as in train_and_evaluate, with the run's shard count.
  eval_set = EvalSet(exp, shards.ShardedIterator.saved_num_shards(positions))
  eval_step = compile_eval_step(exp)
  distributed.barrier("first eval step")  # as before the first train step
  # A reader: the run may still be writing this workdir's rows.
  with metrics_lib.MetricsLogger(workdir, num_steps=config.train.num_steps, log_every=1,
                                 start_step=step, truncate=False) as logger:
    return evaluate(eval_step, params, eval_set, step, logger, _eval_split(config))


def _eval_split(config: ml_collections.ConfigDict) -> str:
  """The split of `ssl-jax eval`'s rows: 'ssl-jax eval TASK NxB', the seqio task or mixture whose
  validation split it read (its name ends in a hash covering every data setting its examples
  depend on, the vocabulary's pieces too) and its `train.eval_steps` batches of
  `train.global_batch_size` rows. Rows of one workdir that scored other examples have other
  splits."""
  return (f"ssl-jax eval {tasks.get_mixture_or_task(config).name} "
          f"{config.train.eval_steps}x{config.train.global_batch_size}")
