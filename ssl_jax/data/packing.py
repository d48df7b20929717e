"""Packing examples into fixed-length rows: seqio's greedy packing, without its per-example loop.

`trim_and_pack_dataset` returns what `seqio.utils.trim_and_pack_dataset(ds, lengths)` returns
(same rows, values, `*_positions` and `*_segment_ids`; tests/test_feature_converters.py compares
them), but decides the rows of each group of examples with a scan over their lengths only and
builds the rows with one scatter per feature. A data position saved while seqio's packer was in
use restores into this one. seqio's TF-ops packer instead concatenates every
example's every feature into the row in a `tf.while_loop`: with it the tiny BERT converter took
41.6 ms of CPU per batch, with this one 23.9 (benchmarks/RESULTS.md, "What the pipeline costs
the cores").

The converters below are seqio's LM and encoder-decoder converters with this packer.
"""
import functools
from typing import Mapping

import seqio
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def trim_and_pack_dataset(ds: tf.data.Dataset, feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
  """Packs 1-D integer features greedily into rows of `feature_lengths`, as seqio does.

  Each example is trimmed to the lengths; its length in a feature is its number of non-zero values
  (seqio's rule: 0 is padding). Examples join the current row, in order, while every feature still
  fits; otherwise the row is closed and the example starts the next. Examples are packed in groups
  of max(feature_lengths) (seqio's, so that rows come out the same). Returns int32 features
  `k`, `k_positions` (0, 1, ... within each example) and `k_segment_ids` (1, 2, ... per example in
  the row, 0 on padding) for each `k` in `feature_lengths`; other features are dropped.
  """
  for k in feature_lengths:
    if ds.element_spec[k].shape.rank != 1:
      raise ValueError(f"feature {k!r} has shape {ds.element_spec[k].shape}; packing needs "
                       "one-dimensional features.")
  keys = tuple(feature_lengths)
  ds = ds.map(lambda x: {k: x[k][:feature_lengths[k]] for k in keys}, num_parallel_calls=AUTOTUNE)
  ds = ds.padded_batch(max(feature_lengths.values()), padded_shapes={k: [-1] for k in keys})
  ds = ds.map(functools.partial(_pack_group, feature_lengths=feature_lengths),
              num_parallel_calls=AUTOTUNE)
  return ds.unbatch()


def _pack_group(group, *, feature_lengths):
  """A padded batch of examples -> its packed rows (a batch of them)."""
  keys = tuple(feature_lengths)
  caps = tf.constant([feature_lengths[k] for k in keys], tf.int32)
  values = {k: tf.cast(group[k], tf.int32) for k in keys}
  lengths = tf.stack([tf.reduce_sum(tf.cast(values[k] != 0, tf.int32), axis=1) for k in keys], 1)

  def place(state, example_lengths):  # (row, tokens used per feature) after adding the example
    row, used, _ = state
    fits = tf.reduce_all(used + example_lengths <= caps)
    offset = tf.where(fits, used, tf.zeros_like(used))
    return row + tf.cast(tf.logical_not(fits), tf.int32), offset + example_lengths, offset

  rows, _, offsets = tf.scan(place, lengths, initializer=(
      tf.constant(0, tf.int32), tf.zeros_like(caps), tf.zeros_like(caps)))
  num_rows = rows[-1] + 1
  out = {}
  for f, k in enumerate(keys):
    position = tf.broadcast_to(tf.range(tf.shape(values[k])[1]), tf.shape(values[k]))
    real = position < lengths[:, f:f + 1]  # the first `length` values of each example
    example = tf.where(real)[:, 0]
    position = tf.boolean_mask(position, real)  # each value's position within its example
    index = tf.stack([tf.gather(rows, example), tf.gather(offsets[:, f], example) + position], 1)
    shape = tf.stack([num_rows, feature_lengths[k]])
    out[k] = tf.scatter_nd(index, tf.boolean_mask(values[k], real), shape)
    positions = tf.scatter_nd(index, position, shape)
    out[f"{k}_positions"] = positions
    out[f"{k}_segment_ids"] = tf.cumsum(tf.cast(positions == 0, tf.int32), axis=1) * tf.cast(
        out[k] != 0, tf.int32)
    for name in (k, f"{k}_positions", f"{k}_segment_ids"):
      out[name].set_shape([None, feature_lengths[k]])
  return out


class Packing:
  """Makes a seqio FeatureConverter pack with `trim_and_pack_dataset`."""

  def _pack_or_pad(self, ds, packed_lengths):
    if self.pack and not self._use_custom_packing_ops:
      return trim_and_pack_dataset(ds, packed_lengths)
    return super()._pack_or_pad(ds, packed_lengths)  # seqio's: padding, or its custom-op packer


class LMFeatureConverter(Packing, seqio.LMFeatureConverter):
  """seqio's decoder-only converter with `trim_and_pack_dataset`."""


class EncDecFeatureConverter(Packing, seqio.EncDecFeatureConverter):
  """seqio's encoder-decoder converter with `trim_and_pack_dataset`."""
