"""Fine-tuning data: files (config.data) -> tokenized rows -> tf.data batches for the trainer.

    examples, rows = data.featurized(config, "validation")   # cached per config
    ds = data.make_dataset(config, "train", shard_info=..., batch_size=...)   # via pipeline

A fine-tuning objective lives in a task module (`TASK_MODULES`) that defines:
  `OBJECTIVE` and `for_config(config)` (the objectives.Objective, head sized for the task),
  `FEATURES` {name: (per_token, numpy dtype)}: the batch features beside the token rows,
  `featurize(config, vocab, examples, split=None) -> Rows` (`split` names the file in its
  warnings), `predict(outputs)` (what evaluation fetches per row, traced under jit) and
  `score(config, examples, rows, predictions) -> {metric: value}`.

The whole split is tokenized once into memory. The train stream is endless: epoch e visits every
row once in the order of a permutation seeded by (config.data.seed, e) (`index_shuffle`, so a
checkpointed position is one integer, not a shuffle buffer); validation repeats in file order.
"""
import functools
import json
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from ssl_jax.data import pipeline
from ssl_jax.data import vocabularies
from ssl_jax.finetune import formats

TASK_MODULES = {
    "classification": "ssl_jax.finetune.classification",
    "regression": "ssl_jax.finetune.regression",
    "tagging": "ssl_jax.finetune.tagging",
    "extractive_qa": "ssl_jax.finetune.extractive_qa",
}
OBJECTIVES = tuple(TASK_MODULES)
_FORMATS = {  # objective -> data formats it reads
    "classification": ("glue_tsv", "tfds"),
    "regression": ("glue_tsv", "tfds"),
    "tagging": ("conllu",),
    "extractive_qa": ("squad_json",),
}
TOKEN_FEATURES = ("input_tokens", "token_type_ids", "segment_ids")


class Rows(NamedTuple):
  """A tokenized split: `arrays` {feature: [N, ...]} are the batch rows; `meta` is what the
  task's `score` needs to map row predictions back to examples (or None)."""
  arrays: dict
  meta: Any


def task_module(config):
  import importlib  # pylint: disable=g-import-not-at-top
  if config.objective not in TASK_MODULES:
    raise ValueError(f"config.objective={config.objective!r} is not a fine-tuning objective; use "
                     f"one of {', '.join(OBJECTIVES)}.")
  return importlib.import_module(TASK_MODULES[config.objective])


def read_examples(config, split: str) -> list:
  """The examples of `split` ('train' | 'validation') from the files/TFDS that config.data names."""
  d = config.data
  if d.format not in _FORMATS[config.objective]:
    raise ValueError(
        f"config.data.format={d.format!r} cannot feed objective {config.objective!r}; use one of "
        f"{', '.join(_FORMATS[config.objective])}.")
  if d.format == "tfds":
    examples = formats.read_glue_tfds(d.task, d.train_split if split == "train" else d.eval_split,
                                      d.tfds_data_dir or None)
  else:
    setting = "train_file" if split == "train" else "eval_file"
    path = d[setting]
    if not path:
      raise ValueError(f"config.data.{setting} is empty; set --config.data.{setting}=PATH to a "
                       f"{d.format} file.")
    if d.format == "glue_tsv":
      examples = formats.read_glue_tsv(d.task, path, formats.label_names(d.task, d.labels))
    elif d.format == "conllu":
      examples = formats.read_conllu(path, d.tag_column)
    else:
      examples = formats.read_squad(path)
      if (split == "train" and d.qa.allow_no_answer and examples
          and not any(e.is_impossible for e in examples)):
        logging.warning(
            "config.data.train_file=%r holds no unanswerable question (SQuAD v1.1), yet "
            "config.data.qa.allow_no_answer=True lets a prediction be no answer, which every "
            "question's gold rules out; set --config.data.qa.allow_no_answer=False for v1.1.", path)
  limit = d.max_train_examples if split == "train" else d.max_eval_examples
  examples = examples[:limit] if limit > 0 else examples
  if not examples:
    raise ValueError(f"the {split} split of config.data (format {d.format!r}) has no examples; "
                     "check config.data.train_file / eval_file.")
  # Unlabelled rows (a GLUE test split, a file without a label column) were refused only as the
  # run featurized them, naming neither the file nor the setting.
  unlabelled = [e.id for e in examples if d.format in ("glue_tsv", "tfds") and e.label is None]
  if unlabelled:
    raise ValueError(f"{len(unlabelled)} examples of {source(config, split)} have no label "
                     f"(first: row {unlabelled[0]}); fine-tuning and scoring need labelled rows "
                     "(a GLUE test split has none): name a labelled file or split.")
  return examples


def source(config, split: str) -> str:
  """How messages name the examples of `split` ('train' | 'validation'): the file setting and
  its value, or the TFDS split."""
  d = config.data
  if d.format == "tfds":
    return f"the TFDS {d.task} {d.train_split if split == 'train' else d.eval_split} split"
  setting = "train_file" if split == "train" else "eval_file"
  return f"config.data.{setting}={d[setting]!r}"


@functools.lru_cache(maxsize=16)
def _featurized(objective: str, data_json: str, split: str):
  config = ml_collections.ConfigDict({"objective": objective, "data": json.loads(data_json)})
  examples = read_examples(config, split)
  vocab = vocabularies.get_vocabulary(config.data.vocab)
  return examples, task_module(config).featurize(config, vocab, examples, split)


def featurized(config, split: str) -> tuple[list, Rows]:
  """(examples, Rows) of `split`; computed once per (objective, config.data, split)."""
  return _featurized(config.objective, config.data.to_json_best_effort(sort_keys=True), split)


def feature_shapes(config) -> dict:
  """{feature: (per-example shape, numpy dtype)} of a batch row."""
  length = config.data.sequence_length
  shapes = {name: ((length,), np.int32) for name in TOKEN_FEATURES}
  for name, (per_token, dtype) in task_module(config).FEATURES.items():
    shapes[name] = ((length,) if per_token else (), dtype)
  return shapes


def batch_spec(config) -> dict:
  """Global batch shapes `{feature: jax.ShapeDtypeStruct}` (pipeline.batch_spec's contract)."""
  batch = int(config.train.global_batch_size)
  return {name: jax.ShapeDtypeStruct((batch,) + shape, dtype)
          for name, (shape, dtype) in feature_shapes(config).items()}


def num_rows(config, split: str) -> int:
  return len(next(iter(featurized(config, split)[1].arrays.values())))


def shuffled_row(position, seed: int, n: int):
  """The row at `position` (int64 scalar) of the endless train stream over `n` rows: epoch
  `position // n` is a stateless permutation of the rows, seeded with (`seed`, epoch)."""
  return tf.random.experimental.index_shuffle(
      position % n, tf.stack([tf.constant(seed, tf.int64), position // n]), n - 1)


def make_dataset(config, split: str, *, shard_info: seqio.ShardInfo,
                 batch_size: int) -> tf.data.Dataset:
  """This shard's endless stream of `batch_size`-row batches of `split` (see the module doc)."""
  arrays = featurized(config, split)[1].arrays
  n = num_rows(config, split)
  train = split == "train"
  seed = int(config.data.seed)
  table = {k: tf.constant(v) for k, v in arrays.items()}

  def row(position):
    index = shuffled_row(position, seed, n) if train else position % n
    return {k: tf.gather(v, index) for k, v in table.items()}

  ds = tf.data.Dataset.range(2**62)
  if shard_info is not None and shard_info.num_shards > 1:
    ds = ds.shard(shard_info.num_shards, shard_info.index)
  ds = ds.map(row, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch_size, drop_remainder=True).prefetch(2).with_options(
      pipeline.dataset_options())
