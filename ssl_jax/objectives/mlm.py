"""BERT masked language modelling with next-sentence or sentence-order prediction.

`OBJECTIVE` (bottom) is the loss; `BertFeatureConverter` turns `ssl_jax.data.preprocessors.bert_pretraining` examples into the `mlm` batch
features of CONTRACTS.md, packing several examples per row or padding one per row.
"""
import functools
from typing import Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from ssl_jax import objectives
from ssl_jax.data import packing
from ssl_jax.models import bert

_Spec = seqio.FeatureConverter.FeatureSpec


class BertFeatureConverter(packing.Packing, seqio.FeatureConverter):
  """Feature converter for BERT pretraining (objective `mlm`), packed or padded.

  Task features (from `bert_pretraining`): `input_tokens`, `token_type_ids` [n], `masked_positions`,
  `masked_targets`, `masked_weights` (float32), `masked_kinds` [k] and the scalar `sentence_label`
  (-1 = no sentence task). `task_feature_lengths(sequence_length, max_predictions)` builds the lengths.

  Model features, with L = sequence_length, S = examples per row and P = max_predictions * S (with
  packing and `mask_rate` given, at most `most_predictions_per_row(L, S, ...)`: no row can hold more;
  `predictions_per_row` > 0 sets P, e.g. to resume a data position saved when P was sized loosely):
    `input_tokens`, `token_type_ids`, `segment_ids`, `positions` [L];
    `masked_positions` (indices into the row), `masked_targets`, `masked_weights` (float32),
    `masked_kinds` [P]; `sentence_positions` (each example's [CLS] index), `sentence_labels`,
    `sentence_weights` (float32; 0 for padding and for label -1) [S].
  S is 1 without packing; with packing `max_examples_per_row`, by default max(1, L // 32) (a row holds
  at most that many examples: the packer stops adding examples when any feature is full).

  Example (pack=True, L=10, max_predictions=2, max_examples_per_row=2):
    ds = [{"input_tokens": [2, 7, 4, 3], "token_type_ids": [0, 0, 0, 0], "masked_positions": [2],
           "masked_targets": [8], "masked_weights": [1.], "masked_kinds": [1], "sentence_label": -1},
          {"input_tokens": [2, 9, 3, 4, 3], "token_type_ids": [0, 0, 0, 1, 1], "masked_positions": [3],
           "masked_targets": [6], "masked_weights": [1.], "masked_kinds": [1], "sentence_label": 1}]
    converted = {
          "input_tokens": [2, 7, 4, 3, 2, 9, 3, 4, 3, 0],
        "token_type_ids": [0, 0, 0, 0, 0, 0, 0, 1, 1, 0],
           "segment_ids": [1, 1, 1, 1, 2, 2, 2, 2, 2, 0],
             "positions": [0, 1, 2, 3, 0, 1, 2, 3, 4, 0],
      "masked_positions": [2, 7, 0, 0],        # the second example's 3, offset by its start 4
        "masked_targets": [8, 6, 0, 0],
        "masked_weights": [1., 1., 0., 0.],
          "masked_kinds": [1, 1, 0, 0],
    "sentence_positions": [0, 4],
       "sentence_labels": [0, 1],
      "sentence_weights": [0., 1.]}
  """

  TASK_FEATURES = {
      "input_tokens": _Spec(dtype=tf.int32),
      "token_type_ids": _Spec(dtype=tf.int32),
      "masked_positions": _Spec(dtype=tf.int32),
      "masked_targets": _Spec(dtype=tf.int32),
      "masked_weights": _Spec(dtype=tf.float32),
      "masked_kinds": _Spec(dtype=tf.int32),
      "sentence_label": _Spec(dtype=tf.int32, rank=0),
  }
  MODEL_FEATURES = {
      "input_tokens": _Spec(dtype=tf.int32),
      "token_type_ids": _Spec(dtype=tf.int32),
      "segment_ids": _Spec(dtype=tf.int32),
      "positions": _Spec(dtype=tf.int32),
      "masked_positions": _Spec(dtype=tf.int32),
      "masked_targets": _Spec(dtype=tf.int32),
      "masked_weights": _Spec(dtype=tf.float32),
      "masked_kinds": _Spec(dtype=tf.int32),
      "sentence_positions": _Spec(dtype=tf.int32),
      "sentence_labels": _Spec(dtype=tf.int32),
      "sentence_weights": _Spec(dtype=tf.float32),
  }
  # segment_ids and positions are model features whether packed or not (CONTRACTS.md).
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack: bool = True, max_examples_per_row: Optional[int] = None,
               mask_rate: Optional[float] = None, predictions_per_row: int = 0, **kwargs):
    if max_examples_per_row is not None and max_examples_per_row < 1:
      raise ValueError(f"max_examples_per_row={max_examples_per_row}; it must be >= 1 (or None).")
    self._max_examples_per_row = max_examples_per_row
    self._mask_rate = mask_rate
    self._predictions_per_row = predictions_per_row
    super().__init__(pack=pack, **kwargs)

  @staticmethod
  def task_feature_lengths(sequence_length: int, max_predictions: int) -> Mapping[str, int]:
    """The task feature lengths for `config.data.sequence_length` and `config.data.mlm.max_predictions`."""
    lengths = {"input_tokens": sequence_length, "token_type_ids": sequence_length, "sentence_label": 1}
    lengths.update({k: max_predictions for k in
                    ("masked_positions", "masked_targets", "masked_weights", "masked_kinds")})
    return lengths

  def examples_per_row(self, sequence_length: int) -> int:
    """S: the most examples a row holds."""
    if not self.pack:
      return 1
    return self._max_examples_per_row or max(1, sequence_length // 32)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    length = task_feature_lengths["input_tokens"]
    rows = self.examples_per_row(length)
    predictions = task_feature_lengths["masked_positions"] * rows
    if self.pack and self._mask_rate is not None:
      # A longer axis is padding that the MLM head would still project onto the whole vocabulary
      # (P = 80 instead of 21 for L = 128, S = 4: a 4x larger MLM head).
      cap = task_feature_lengths["masked_positions"]
      predictions = min(predictions, most_predictions_per_row(length, rows, self._mask_rate, cap))
      if self._predictions_per_row:
        one = most_predictions_per_row(length, 1, self._mask_rate, cap)
        if self._predictions_per_row < one:
          raise ValueError(
              f"config.data.mlm.predictions_per_row={self._predictions_per_row} is shorter than "
              f"one example's predictions (up to {one}), which packing would cut; use at least "
              f"{one}, or 0 (the most a row can hold: {predictions}).")
        predictions = self._predictions_per_row
    lengths = {}
    for name in self.MODEL_FEATURES:
      lengths[name] = (predictions if name.startswith("masked_") else
                       rows if name.startswith("sentence_") else length)
    return lengths

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    lengths = self.get_model_feature_lengths(task_feature_lengths)
    if self.pack:
      ds = ds.map(_to_packable, num_parallel_calls=tf.data.AUTOTUNE)
      ds = self._pack_or_pad(ds, _packed_lengths(lengths))
      return ds.map(_from_packed, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(_single_example_row, num_parallel_calls=tf.data.AUTOTUNE)
    return seqio.utils.trim_and_pad_dataset(ds, lengths)


@functools.lru_cache(maxsize=None)
def most_predictions_per_row(length: int, rows: int, mask_rate: float, max_predictions: int) -> int:
  """The most predictions a packed row of `length` tokens and at most `rows` examples can hold.

  `bert_pretraining` gives an example with n non-special tokens min(max_predictions, max(1,
  round(n * mask_rate))) predictions (float32, half to even, as tf.round), and at least 2 special
  tokens ([CLS] ... [SEP]). The most over all splits of the row into examples (an exact knapsack:
  21 for L = 128, S = 4, mask rate 0.15; mask_rate * L + S = 23.2 bounds it loosely). A smaller
  predictions axis would not lose predictions either (the packer starts a new row when any feature
  is full) but would pack rows less densely; this one leaves the rows exactly as unbounded.
  """
  n = np.arange(length - 1)   # non-special tokens of one example
  per_example = np.minimum(max_predictions, np.maximum(
      1, np.round(n.astype(np.float32) * np.float32(mask_rate)))).astype(np.int64)
  best = np.zeros(length + 1, np.int64)   # best[t]: the most predictions in t tokens
  for _ in range(rows):
    more = best.copy()
    for tokens, predictions in zip(n + 2, per_example):
      more[tokens:] = np.maximum(more[tokens:], predictions + best[:length + 1 - tokens])
    best = more
  return int(best[length])


def _single_example_row(ex):
  """Model features of one unpacked example (before padding)."""
  label = ex["sentence_label"]
  return {
      "input_tokens": ex["input_tokens"],
      "token_type_ids": ex["token_type_ids"],
      "segment_ids": tf.ones_like(ex["input_tokens"]),
      "positions": tf.range(tf.size(ex["input_tokens"]), dtype=tf.int32),
      "masked_positions": ex["masked_positions"],
      "masked_targets": ex["masked_targets"],
      "masked_weights": ex["masked_weights"],
      "masked_kinds": ex["masked_kinds"],
      "sentence_positions": tf.zeros([1], tf.int32),
      "sentence_labels": tf.reshape(tf.maximum(label, 0), [1]),
      "sentence_weights": tf.reshape(tf.cast(label >= 0, tf.float32), [1]),
  }


# Features are packed under names that do not end in "_positions" or "_segment_ids" (seqio's packer
# strips those suffixes to find a feature's length). seqio's packer also treats 0 as padding inside a
# feature (it derives segment ids from non-zero values), but token types, labels, indices and weights
# are often 0; so every packed value is shifted to be >= 1 and shifted back after packing.
_PACKED = {  # task feature -> (packed name, shift, model feature giving its packed length)
    "input_tokens": ("tokens", 1, "input_tokens"),
    "token_type_ids": ("token_types", 1, "token_type_ids"),
    "masked_positions": ("masked_index", 1, "masked_positions"),
    "masked_targets": ("masked_target", 1, "masked_targets"),
    "masked_weights": ("masked_weight", 1, "masked_weights"),
    "masked_kinds": ("masked_kind", 1, "masked_kinds"),
    "sentence_label": ("sentence_label", 2, "sentence_labels"),  # labels are -1, 0 or 1
}


def _packed_lengths(lengths):
  return {name: lengths[model_feature] for name, _, model_feature in _PACKED.values()}


def _to_packable(ex):
  out = {name: tf.reshape(tf.cast(ex[feature], tf.int32) + shift, [-1])
         for feature, (name, shift, _) in _PACKED.items()}
  # Every example contributes >= 1 value to every feature (bert_pretraining guarantees a masked entry),
  # so segment k of each packed feature is the same example.
  return out


def _from_packed(row):
  """Undoes the shift and moves per-example indices into row coordinates."""
  segment_ids = row["tokens_segment_ids"]
  positions = row["tokens_positions"]
  # starts[k] = index of example k's first token ([CLS]); starts[0] = 0 so padding gathers stay valid.
  starts = tf.cast(tf.where(tf.logical_and(positions == 0, segment_ids > 0))[:, 0], tf.int32)
  starts = tf.concat([[0], starts], 0)

  def unshift(feature, segments):
    name, shift, _ = _PACKED[feature]
    return tf.where(segments > 0, row[name] - shift, 0)

  masked_segments = row["masked_index_segment_ids"]
  sentence_segments = row["sentence_label_segment_ids"]
  label = unshift("sentence_label", sentence_segments)
  has_label = tf.logical_and(sentence_segments > 0, label >= 0)
  return {
      "input_tokens": unshift("input_tokens", segment_ids),
      "token_type_ids": unshift("token_type_ids", segment_ids),
      "segment_ids": segment_ids,
      "positions": positions,
      "masked_positions": unshift("masked_positions", masked_segments) + tf.gather(starts, masked_segments),
      "masked_targets": unshift("masked_targets", masked_segments),
      "masked_weights": tf.cast(unshift("masked_weights", masked_segments), tf.float32),
      "masked_kinds": unshift("masked_kinds", masked_segments),
      "sentence_positions": tf.gather(starts, sentence_segments),
      "sentence_labels": tf.where(has_label, label, 0),
      "sentence_weights": tf.cast(has_label, tf.float32),
  }


_MODEL_INPUTS = ("input_tokens", "token_type_ids", "segment_ids", "positions", "masked_positions",
                 "sentence_positions")
# `masked_kinds` values: how a predicted position was corrupted (0 is padding).
_KINDS = {1: "masked", 2: "random", 3: "kept"}


def model_inputs(batch):
  return {name: batch[name] for name in _MODEL_INPUTS}


def denominators(batch):
  return {"mlm": batch["masked_weights"].sum(), "sentence": batch["sentence_weights"].sum()}


def loss(outputs, batch, denominators, z_loss: float = 0.0):
  """Masked-LM cross-entropy per predicted token plus NSP/SOP cross-entropy per sentence pair,
  plus the masked-LM softmax's z-loss (`objectives.z_loss_sum`, metric `z_loss`) if `z_loss`.

  Metrics: `mlm_loss`, `mlm_accuracy` and `mlm_accuracy_{masked,random,kept}` (accuracy on the
  positions replaced by [MASK], by a random token, or left unchanged), `sentence_loss` and
  `sentence_accuracy` (NSP or SOP, whichever `config.data.mlm.sentence_task` chose).
  """
  weights = batch["masked_weights"]
  losses, hits, log_z = objectives.token_losses(outputs["mlm_logits"], batch["masked_targets"])
  mlm_sum, mlm_correct, mlm_count = (losses * weights).sum(), (hits * weights).sum(), weights.sum()
  sent_sum, sent_correct, sent_count = objectives.token_cross_entropy(
      outputs["sentence_logits"], batch["sentence_labels"], batch["sentence_weights"])
  sums = {"mlm_loss": (mlm_sum, mlm_count), "mlm_accuracy": (mlm_correct, mlm_count),
          "sentence_loss": (sent_sum, sent_count),
          "sentence_accuracy": (sent_correct, sent_count)}
  if z_loss:
    sums["z_loss"] = (objectives.z_loss_sum(log_z, weights, z_loss), mlm_count)
    mlm_sum = mlm_sum + sums["z_loss"][0]
  total = (mlm_sum / objectives.safe_denominator(denominators["mlm"])
           + sent_sum / objectives.safe_denominator(denominators["sentence"]))
  for kind, name in _KINDS.items():
    of_kind = (batch["masked_kinds"] == kind) * weights
    sums[f"mlm_accuracy_{name}"] = ((hits * of_kind).sum(), of_kind.sum())
  return total, sums


OBJECTIVE = objectives.Objective(
    name="mlm", family=("bert",), make_model=bert.BertForPreTraining, model_inputs=model_inputs,
    denominators=denominators, loss=loss)
