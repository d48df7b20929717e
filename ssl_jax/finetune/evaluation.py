"""Scores fine-tuned params on the whole eval split with the task's metrics.

    scores = evaluation.evaluate(exp, params)      # exp = trainer.Experiment.build(config)

Every row of the split is predicted once: rows go through one jitted, sharded forward pass in
global batches of `train.global_batch_size` (the last batch padded with copies of row 0 and cut
off), each process feeding the rows its devices hold; the predictions come back to every host
and the task module (`score`) turns them into metrics.
"""
import jax
import numpy as np

from ssl_jax import partitioning
from ssl_jax.data import shards
from ssl_jax.finetune import data


def compile_predict(exp):
  """`(params, batch) -> task predictions` compiled for the experiment's layouts."""
  module = data.task_module(exp.config)

  def predict(params, batch):
    outputs = exp.model.apply({"params": params}, **exp.objective.model_inputs(batch),
                              deterministic=True)
    return module.predict(outputs)

  batch_abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=exp.batch_sharding)
                    for k, v in exp.batch_spec.items()}
  step = jax.jit(predict, in_shardings=(exp.layout.shardings.params, exp.batch_sharding),
                 out_shardings=partitioning.replicated(exp.mesh))
  with partitioning.with_logical_rules(exp.layout.rules, exp.mesh):
    return step.lower(exp.layout.abstract.params, batch_abstract).compile()


def predict_rows(exp, params, arrays: dict) -> np.ndarray:
  """Predictions for every row of `arrays` ({feature: [N, ...]}), in row order."""
  predict = compile_predict(exp)
  batch_size = int(exp.config.train.global_batch_size)
  lo, hi = shards.process_rows(exp.batch_sharding, batch_size)[jax.process_index()]
  n = len(next(iter(arrays.values())))
  outputs = []
  for begin in range(0, n, batch_size):
    index = np.arange(begin, begin + batch_size)
    index = np.where(index < n, index, 0)
    local = {k: arrays[k][index[lo:hi]] for k in exp.batch_spec}
    outputs.append(predict(params, shards.global_arrays(local, exp.batch_sharding, batch_size)))
  return np.concatenate(jax.device_get(outputs))[:n]


def evaluate(exp, params) -> dict[str, float]:
  """The task's metrics of `params` on config.data's eval split."""
  examples, rows = data.featurized(exp.config, "validation")
  predictions = predict_rows(exp, params, rows.arrays)
  return data.task_module(exp.config).score(exp.config, examples, rows, predictions)
