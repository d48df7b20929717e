"""Task -> per-process tf.data -> global `jax.Array` batches, with a checkpointable position.

    it = make_iterator(config, "train", batch_sharding)   # batch_sharding from ssl_jax.partitioning
    batch = next(it)                                       # dict[str, jax.Array], global batch
    it.save(directory); it.restore(directory)              # one tf.data checkpoint per process

Each process reads shard `jax.process_index()` of `jax.process_count()` (seqio `ShardInfo`) and batches
`global_batch_size / process_count` examples; `jax.make_array_from_process_local_data` assembles the global
array. The stream depends only on the config (data seed, sharding, settings), never on timing: tf.data runs
with `deterministic=True` and every random op is seeded (see `ssl_jax.data.preprocessors`).
The train split repeats forever, shuffled with `config.data.seed`; validation is unshuffled and also
repeats, so `train.eval_steps` batches are always available and always the same.
"""
import json
import os
from typing import Optional

import jax
import numpy as np
import seqio
import tensorflow as tf

from ssl_jax.data import packing
from ssl_jax.data import sources
from ssl_jax.data import tasks

_ITERATOR_PREFIX = "iterator"
_META_FILE = "data_iterator.json"


def feature_converter(config) -> seqio.FeatureConverter:
  """The objective's converter: LM (causal_lm), EncDec (span_corruption, denoising), Bert (mlm).

  Without seqio's length check: the Task already trims every sequence feature to its length, so the
  check cannot fail, and tracing it costs seconds of every process's start (autograph).
  """
  pack = bool(sources.config_get(config.data, "pack", True))
  if config.objective == "causal_lm":
    return packing.LMFeatureConverter(pack=pack, apply_length_check=False)
  if config.objective in ("span_corruption", "denoising"):
    return packing.EncDecFeatureConverter(pack=pack, apply_length_check=False)
  if config.objective == "mlm":
    from ssl_jax.objectives import mlm  # pylint: disable=g-import-not-at-top  (imports the model stack)
    mlm_cfg = config.data.mlm
    per_row = int(sources.config_get(mlm_cfg, "predictions_per_row", 0))
    return mlm.BertFeatureConverter(pack=pack, mask_rate=float(mlm_cfg.mask_rate),
                                    predictions_per_row=per_row, apply_length_check=False)
  raise ValueError(
      f"config.objective={config.objective!r} is not an objective; use one of {', '.join(tasks.OBJECTIVES)}.")


# seqio's LM/EncDec converters emit segment ids and positions only when packing; the models always get
# them (CONTRACTS.md): 1 on real tokens, 0 on padding; positions 0.. on real tokens, 0 on padding.
_UNPACKED_SEGMENTS = {"decoder": "decoder_target_tokens", "encoder": "encoder_input_tokens"}


def _added_segment_features(converter) -> dict:
  """{prefix: token feature} for the segment/position features `converter` leaves out."""
  if converter.pack or not isinstance(converter, (seqio.LMFeatureConverter, seqio.EncDecFeatureConverter)):
    return {}
  return {p: f for p, f in _UNPACKED_SEGMENTS.items() if f in converter.MODEL_FEATURES}


def _add_segments(ex, added):
  ex = dict(ex)
  for prefix, feature in added.items():
    real = tf.cast(ex[feature] != 0, tf.int32)
    ex[f"{prefix}_segment_ids"] = real
    ex[f"{prefix}_positions"] = tf.range(tf.shape(real)[-1], dtype=tf.int32) * real
  return ex


# Fine-tuning objectives read task files (ssl_jax.finetune.data), not seqio pretraining tasks.
_FINETUNING = ("classification", "regression", "tagging", "extractive_qa")


def _is_finetuning(config) -> bool:
  return config.objective in _FINETUNING


def per_process_batch_size(config, process_count: Optional[int] = None) -> int:
  """global_batch_size / process count; raises ValueError naming the setting if it does not divide."""
  process_count = jax.process_count() if process_count is None else process_count
  global_batch = int(config.train.global_batch_size)
  if global_batch % process_count:
    raise ValueError(
        f"config.train.global_batch_size={global_batch} does not divide among {process_count} processes; "
        f"use a multiple of {process_count}.")
  return global_batch // process_count


def dataset_options() -> tf.data.Options:
  """The options of every ssl_jax input pipeline: deterministic order, no autotuner thread."""
  options = tf.data.Options()
  options.deterministic = True
  # tf.data's autotuner thread (TF 2.21) keeps a destroyed iterator alive until its next wake-up,
  # up to a minute: `ssl-jax train` sat 45 s at exit after a 300-step run. Parallel maps then use
  # one thread per core (AUTOTUNE without the tuner), which keeps up with the step (benchmarks/).
  options.autotune.enabled = False
  return options


def make_dataset(config, split: str, *, shard_info: Optional[seqio.ShardInfo] = None,
                 batch_size: Optional[int] = None) -> tf.data.Dataset:
  """This process's batched tf.data pipeline of model features (numpy-ready dicts).

  Args:
    config: the experiment config.
    split: 'train' (shuffled with config.data.seed) or 'validation' (in order); both repeat forever
      (a validation pass repeats as it was; the eval set wraps around a short split).
    shard_info: default ShardInfo(jax.process_index(), jax.process_count()).
    batch_size: default the per-process batch (`per_process_batch_size`).
  """
  if split not in sources.SPLITS:
    raise ValueError(f"split={split!r}; use one of {', '.join(sources.SPLITS)}.")
  if shard_info is None:
    shard_info = seqio.ShardInfo(jax.process_index(), jax.process_count())
  if batch_size is None:
    batch_size = per_process_batch_size(config, shard_info.num_shards)
  if _is_finetuning(config):
    from ssl_jax.finetune import data as finetune_data  # pylint: disable=g-import-not-at-top
    return finetune_data.make_dataset(config, split, shard_info=shard_info, batch_size=batch_size)
  provider = tasks.get_mixture_or_task(config)
  lengths = tasks.task_feature_lengths(config)
  converter = feature_converter(config)
  train = split == "train"
  # seqio's Task trims every feature named in sequence_length, which fails on scalars (sentence_label).
  trimmed = {k: v for k, v in lengths.items() if k not in provider.output_features
             or provider.output_features[k].rank > 0}
  seed = int(sources.config_get(config.data, "seed", 0))

  def examples(source):
    ds = source.get_dataset(
        sequence_length=trimmed, split=split, shuffle=train, seed=seed,
        shard_info=shard_info if shard_info.num_shards > 1 else None, num_epochs=None,
        # seqio would cache small datasets in memory, which tf.data checkpoints then copy in full.
        try_in_mem_cache=False)
    return ds.map(lambda ex: {k: ex[k] for k in provider.output_features if k in ex})  # drop doc_index etc.

  if isinstance(provider, seqio.Mixture) and shard_info.num_shards > 1:
    # seqio samples each shard's mixture with the seed its tasks share (they need it to split the
    # documents between shards), so every shard would pick the same sources in the same order and
    # a global batch would hold S copies of one shard's mix. Each shard samples with its own seed.
    ds = tf.data.Dataset.sample_from_datasets(
        [examples(task) for task in provider.tasks],
        [provider.get_rate(task) for task in provider.tasks],
        seed=seed * 1_000_003 + shard_info.index, stop_on_empty_dataset=True)
  else:
    ds = examples(provider)
  ds = converter(ds, task_feature_lengths=lengths)
  added = _added_segment_features(converter)
  if added:
    ds = ds.map(lambda ex: _add_segments(ex, added), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(2)
  return ds.with_options(dataset_options())


def batch_spec(config) -> dict:
  """Global batch shapes/dtypes, `{feature: jax.ShapeDtypeStruct}`, without building the pipeline."""
  if _is_finetuning(config):
    from ssl_jax.finetune import data as finetune_data  # pylint: disable=g-import-not-at-top
    return finetune_data.batch_spec(config)
  converter = feature_converter(config)
  lengths = converter.get_model_feature_lengths(tasks.task_feature_lengths(config))
  specs = dict(converter.MODEL_FEATURES)
  for prefix, _ in _added_segment_features(converter).items():
    lengths.update({f"{prefix}_segment_ids": lengths[_UNPACKED_SEGMENTS[prefix]],
                    f"{prefix}_positions": lengths[_UNPACKED_SEGMENTS[prefix]]})
  batch = int(config.train.global_batch_size)
  return {name: jax.ShapeDtypeStruct(
      (batch, length), specs[name].dtype.as_numpy_dtype if name in specs else np.int32)
          for name, length in lengths.items()}


class DataIterator:
  """Global batches from this process's tf.data pipeline; its position saves and restores.

  `next(it)` -> dict of global `jax.Array`s laid out by `batch_sharding`. With `batch_sharding=None` it
  yields this process's numpy batch instead (for tools and tests that need no devices).
  """

  def __init__(self, dataset: tf.data.Dataset, batch_sharding, *, process_index: Optional[int] = None,
               process_count: Optional[int] = None):
    self._dataset = dataset
    self._iterator = iter(dataset)
    self._sharding = batch_sharding
    self._process_index = jax.process_index() if process_index is None else process_index
    self._process_count = jax.process_count() if process_count is None else process_count

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    local = {k: v.numpy() for k, v in next(self._iterator).items()}
    if self._sharding is None:
      return local
    return jax.make_array_from_process_local_data(self._sharding, local)

  def _process_dir(self, directory) -> str:
    return os.path.join(os.fspath(directory), f"process_{self._process_index}")

  def save(self, directory) -> None:
    """Writes this process's position under `directory/process_<i>/` (every process calls this)."""
    path = self._process_dir(directory)
    tf.io.gfile.makedirs(path)
    tf.train.Checkpoint(iterator=self._iterator).write(os.path.join(path, _ITERATOR_PREFIX))
    with tf.io.gfile.GFile(os.path.join(path, _META_FILE), "w") as f:
      json.dump({"process_index": self._process_index, "process_count": self._process_count,
                 "feature_lengths": self._feature_lengths()}, f)

  def _feature_lengths(self):
    """The shape after the batch axis of each feature of the stream's batches ({feature: shape}
    for the pipelines' dicts)."""
    return tf.nest.map_structure(lambda spec: spec.shape.as_list()[1:], self._dataset.element_spec)

  def restore(self, directory) -> None:
    """Moves to the position saved under `directory`; the process count must equal the saving run's."""
    path = self._process_dir(directory)
    meta_path = os.path.join(path, _META_FILE)
    if not tf.io.gfile.exists(meta_path):
      raise FileNotFoundError(
          f"no data iterator checkpoint for process {self._process_index} under {os.fspath(directory)!r}; "
          f"it was saved by fewer processes than the {self._process_count} now running. Resume with the "
          "process count that saved it, or start a fresh workdir.")
    with tf.io.gfile.GFile(meta_path) as f:
      meta = json.load(f)
    saved = meta["process_count"]
    lengths, saved_lengths = self._feature_lengths(), meta.get("feature_lengths")
    if saved_lengths is not None and saved_lengths != lengths:  # recorded since 2026-11-30
      if isinstance(lengths, dict) and isinstance(saved_lengths, dict):
        differences = "; ".join(
            f"{k}: {saved_lengths.get(k)} in the checkpoint, {lengths.get(k)} now"
            for k in sorted(lengths.keys() | saved_lengths.keys())
            if saved_lengths.get(k) != lengths.get(k))
      else:
        differences = f"{saved_lengths} in the checkpoint, {lengths} now"
      hint = ""
      if isinstance(lengths, dict) and isinstance(saved_lengths, dict) and all(
          k.startswith("masked_") or lengths.get(k) == saved_lengths.get(k) for k in lengths):
        hint = (" (ssl_jax before 2026-12-02 sized BERT's masked_* axis more loosely: to resume "
                "such a position, set config.data.mlm.predictions_per_row="
                f"{saved_lengths['masked_positions'][0]})")
      raise ValueError(
          f"the data position under {os.fspath(directory)!r} belongs to a stream of other "
          f"shapes ({differences}): the data settings that size the batches "
          "(config.data.sequence_length, targets_length, the objective's lengths) differ from "
          f"the checkpoint's config.json{hint}. Resume with the checkpoint's data settings, or use "
          "a fresh --workdir.")
    if saved != self._process_count:
      raise ValueError(
          f"the data iterator checkpoint under {os.fspath(directory)!r} was saved by {saved} processes, but "
          f"{self._process_count} are running; each process's tf.data position belongs to its shard. Resume "
          "with the same number of processes (hosts), or start a fresh workdir.")
    tf.train.Checkpoint(iterator=self._iterator).read(os.path.join(path, _ITERATOR_PREFIX)).assert_consumed()


def make_iterator(config, split: str, batch_sharding, shard_count: Optional[int] = None):
  """This process's rows of the global batch stream over `split` (a `shards.ShardedIterator`: the
  same `next`/`save`/`restore`, with a stream that does not depend on the process count and a
  position that restores under any process count; see `ssl_jax.data.shards`). shard_count:
  the stream's shard count (default config.data.num_shards, 0 = the process count)."""
  from ssl_jax.data import shards  # pylint: disable=g-import-not-at-top  (shards builds on this module)
  return shards.ShardedIterator(config, split, batch_sharding, shard_count)
