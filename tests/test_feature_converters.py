"""Feature converters give the batch features CONTRACTS.md names: BERT (ours), T5/BART and GPT (seqio's,
with our packer, which must pack exactly as seqio's does)."""
import ml_collections
import numpy as np
import pytest
import seqio
import tensorflow as tf
from seqio import test_utils

from ssl_jax.data import corpora, packing, preprocessors, vocabularies
from ssl_jax.objectives import mlm as mlm_objective
from ssl_jax.objectives.mlm import BertFeatureConverter

BERT_TASK_SPEC = {
    "input_tokens": tf.TensorSpec([None], tf.int32), "token_type_ids": tf.TensorSpec([None], tf.int32),
    "masked_positions": tf.TensorSpec([None], tf.int32), "masked_targets": tf.TensorSpec([None], tf.int32),
    "masked_weights": tf.TensorSpec([None], tf.float32), "masked_kinds": tf.TensorSpec([None], tf.int32),
    "sentence_label": tf.TensorSpec([], tf.int32),
}


def _dataset(examples, spec):
  return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)


def _bert_example(tokens, types, positions, targets, kinds, label):
  return {"input_tokens": tokens, "token_type_ids": types, "masked_positions": positions,
          "masked_targets": targets, "masked_weights": [1.0] * len(positions), "masked_kinds": kinds,
          "sentence_label": label}


TWO_EXAMPLES = [
    _bert_example([2, 7, 4, 3], [0, 0, 0, 0], [2], [8], [1], -1),
    _bert_example([2, 9, 3, 4, 3], [0, 0, 0, 1, 1], [3], [6], [1], 1),
]


def test_bert_converter_packs_examples_and_offsets_their_indices():
  converter = BertFeatureConverter(pack=True, max_examples_per_row=2)
  ds = converter(_dataset(TWO_EXAMPLES, BERT_TASK_SPEC), BertFeatureConverter.task_feature_lengths(10, 2))
  test_utils.assert_dataset(ds, {
      "input_tokens": [2, 7, 4, 3, 2, 9, 3, 4, 3, 0],
      "token_type_ids": [0, 0, 0, 0, 0, 0, 0, 1, 1, 0],
      "segment_ids": [1, 1, 1, 1, 2, 2, 2, 2, 2, 0],
      "positions": [0, 1, 2, 3, 0, 1, 2, 3, 4, 0],
      "masked_positions": [2, 7, 0, 0],
      "masked_targets": [8, 6, 0, 0],
      "masked_weights": [1.0, 1.0, 0.0, 0.0],
      "masked_kinds": [1, 1, 0, 0],
      "sentence_positions": [0, 4],
      "sentence_labels": [0, 1],
      "sentence_weights": [0.0, 1.0],
  }, expected_dtypes={"masked_weights": tf.float32, "sentence_weights": tf.float32, "input_tokens": tf.int32})


def test_bert_converter_pads_one_example_per_row_without_packing():
  converter = BertFeatureConverter(pack=False)
  ds = converter(_dataset(TWO_EXAMPLES, BERT_TASK_SPEC), BertFeatureConverter.task_feature_lengths(6, 2))
  test_utils.assert_dataset(ds, [{
      "input_tokens": [2, 7, 4, 3, 0, 0], "token_type_ids": [0, 0, 0, 0, 0, 0],
      "segment_ids": [1, 1, 1, 1, 0, 0], "positions": [0, 1, 2, 3, 0, 0],
      "masked_positions": [2, 0], "masked_targets": [8, 0], "masked_weights": [1.0, 0.0],
      "masked_kinds": [1, 0], "sentence_positions": [0], "sentence_labels": [0], "sentence_weights": [0.0],
  }, {
      "input_tokens": [2, 9, 3, 4, 3, 0], "token_type_ids": [0, 0, 0, 1, 1, 0],
      "segment_ids": [1, 1, 1, 1, 1, 0], "positions": [0, 1, 2, 3, 4, 0],
      "masked_positions": [3, 0], "masked_targets": [6, 0], "masked_weights": [1.0, 0.0],
      "masked_kinds": [1, 0], "sentence_positions": [0], "sentence_labels": [1], "sentence_weights": [1.0],
  }])


def test_bert_converter_caps_examples_per_row_and_keeps_zero_weight_entries_aligned():
  examples = [
      _bert_example([2, 5, 3], [0, 0, 0], [1], [5], [3], 0),
      # An example without predictions carries one zero-weight entry (see bert_pretraining).
      dict(_bert_example([2, 6, 3], [0, 0, 0], [0], [2], [0], 0), masked_weights=[0.0]),
      _bert_example([2, 7, 3], [0, 0, 0], [1], [7], [2], 1),
  ]
  converter = BertFeatureConverter(pack=True, max_examples_per_row=2)
  ds = converter(_dataset(examples, BERT_TASK_SPEC), BertFeatureConverter.task_feature_lengths(12, 1))
  rows = list(ds.as_numpy_iterator())
  assert len(rows) == 2  # 9 tokens would fit one row, but S = 2 examples per row
  np.testing.assert_array_equal(rows[0]["segment_ids"], [1, 1, 1, 2, 2, 2] + [0] * 6)
  np.testing.assert_array_equal(rows[0]["masked_positions"], [1, 3])
  np.testing.assert_array_equal(rows[0]["masked_weights"], [1.0, 0.0])
  np.testing.assert_array_equal(rows[0]["masked_kinds"], [3, 0])
  np.testing.assert_array_equal(rows[0]["sentence_positions"], [0, 3])
  np.testing.assert_array_equal(rows[0]["sentence_weights"], [1.0, 1.0])
  np.testing.assert_array_equal(rows[1]["masked_positions"], [1, 0])
  np.testing.assert_array_equal(rows[1]["sentence_labels"], [1, 0])
  np.testing.assert_array_equal(rows[1]["sentence_weights"], [1.0, 0.0])


def test_bert_converter_feature_lengths_follow_config():
  lengths = BertFeatureConverter.task_feature_lengths(128, 20)
  packed = BertFeatureConverter(pack=True).get_model_feature_lengths(lengths)
  assert packed["input_tokens"] == packed["positions"] == 128
  assert packed["sentence_positions"] == 4 and packed["masked_positions"] == 80  # S = 128 // 32, P = 20 * S
  unpacked = BertFeatureConverter(pack=False).get_model_feature_lengths(lengths)
  assert unpacked["sentence_labels"] == 1 and unpacked["masked_targets"] == 20
  with pytest.raises(ValueError, match="max_examples_per_row"):
    BertFeatureConverter(max_examples_per_row=0)


def test_bert_pretraining_through_packing_points_at_the_right_tokens():
  vocab = vocabularies.get_vocabulary(ml_collections.ConfigDict({"kind": "default", "path": "", "extra_ids": 0}))
  ids = vocabularies.special_ids(vocab)
  docs = [[corpora.sentence_text(s) for s in doc] for doc in corpora.generate_documents(30, seed=3)]
  ds = _dataset([{"doc_index": np.int64(i), "sentences": s} for i, s in enumerate(docs)],
                {"doc_index": tf.TensorSpec([], tf.int64), "sentences": tf.TensorSpec([None], tf.string)})
  mlm = ml_collections.ConfigDict(dict(mask_rate=0.15, mask_token_ratio=1.0, random_token_ratio=0.0,
                                       whole_word=False, max_predictions=6, sentence_task="sop"))
  examples = preprocessors.bert_pretraining(ds, vocab=vocab, sequence_length=40, mlm_cfg=mlm, seed=0)
  converter = BertFeatureConverter(pack=True)
  rows = list(converter(examples, BertFeatureConverter.task_feature_lengths(64, 6)).as_numpy_iterator())
  num_examples = sum(1 for _ in examples)
  assert sum(int(r["sentence_weights"].sum()) for r in rows) == num_examples
  for r in rows:
    real = r["masked_weights"] > 0
    # Every prediction points at a [MASK] of its own example; every example starts with [CLS].
    np.testing.assert_array_equal(r["input_tokens"][r["masked_positions"][real]], ids.mask)
    seg_of_prediction = r["segment_ids"][r["masked_positions"][real]]
    assert np.all(np.diff(seg_of_prediction) >= 0) and np.all(seg_of_prediction > 0)
    starts = r["sentence_positions"][r["sentence_weights"] > 0]
    np.testing.assert_array_equal(r["input_tokens"][starts], ids.cls)
    np.testing.assert_array_equal(r["positions"][starts], 0)
    assert r["masked_positions"].shape == (6 * 2,) and r["sentence_labels"].shape == (2,)


def test_enc_dec_converter_gives_the_contract_features_packed():
  ds = _dataset([{"inputs": [7, 8, 5, 1], "targets": [3, 9, 1]}, {"inputs": [8, 4, 9, 3, 1], "targets": [4, 1]}],
                {"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)})
  converted = packing.EncDecFeatureConverter(pack=True)(ds, {"inputs": 10, "targets": 7})
  test_utils.assert_dataset(converted, {
      "encoder_input_tokens": [7, 8, 5, 1, 8, 4, 9, 3, 1, 0],
      "encoder_segment_ids": [1, 1, 1, 1, 2, 2, 2, 2, 2, 0],
      "encoder_positions": [0, 1, 2, 3, 0, 1, 2, 3, 4, 0],
      "decoder_target_tokens": [3, 9, 1, 4, 1, 0, 0],
      "decoder_input_tokens": [0, 3, 9, 0, 4, 0, 0],
      "decoder_loss_weights": [1, 1, 1, 1, 1, 0, 0],
      "decoder_segment_ids": [1, 1, 1, 2, 2, 0, 0],
      "decoder_positions": [0, 1, 2, 0, 1, 0, 0],
  })


def test_lm_converter_gives_the_contract_features_packed():
  ds = _dataset([{"targets": [3, 9, 1]}, {"targets": [4, 1]}], {"targets": tf.TensorSpec([None], tf.int32)})
  converted = packing.LMFeatureConverter(pack=True)(ds, {"targets": 6})
  test_utils.assert_dataset(converted, {
      "decoder_target_tokens": [3, 9, 1, 4, 1, 0],
      "decoder_input_tokens": [0, 3, 9, 0, 4, 0],
      "decoder_loss_weights": [1, 1, 1, 1, 1, 0],
      "decoder_positions": [0, 1, 2, 0, 1, 0],
      "decoder_segment_ids": [1, 1, 1, 2, 2, 0],
  })


@pytest.mark.parametrize("max_length", [3, 40], ids=["short_examples", "long_examples"])
def test_packing_equals_seqio_packing(max_length):
  """Rows, values, positions and segment ids as seqio.utils.trim_and_pack_dataset's, with empty
  features, examples longer than a row, and a 0 inside an example (seqio's rule: its length is
  its number of non-zero values)."""
  rng = np.random.default_rng(max_length)
  lengths = {"a": 16, "b": 9, "c": 4}
  examples = []
  for _ in range(300):  # more than one group of max(lengths) examples
    example = {"other": np.int32(1)}  # dropped by both
    for k in lengths:
      v = rng.integers(1, 30, int(rng.integers(0, max_length + 1))).astype(np.int32)
      if len(v) and rng.random() < 0.1:
        v[rng.integers(len(v))] = 0
      example[k] = v
    examples.append(example)
  spec = {**{k: tf.TensorSpec([None], tf.int32) for k in lengths}, "other": tf.TensorSpec([], tf.int32)}
  want = list(seqio.utils.trim_and_pack_dataset(_dataset(examples, spec), lengths).as_numpy_iterator())
  ours = packing.trim_and_pack_dataset(_dataset(examples, spec), lengths)
  got = list(ours.as_numpy_iterator())
  assert len(got) == len(want)
  if max_length == 3:
    assert len(got) < len(examples) / 2  # short examples share rows
  for g, w in zip(got, want):
    assert sorted(g) == sorted(w)
    for k in w:
      np.testing.assert_array_equal(g[k], w[k], err_msg=k)
  assert all(s.shape == (lengths[k.split("_")[0]],) for k, s in ours.element_spec.items())


def test_a_data_position_saved_with_seqio_packing_restores_into_ours(tmp_path):
  """Runs checkpointed before ssl_jax had its own packer resume at the same row."""
  rng = np.random.default_rng(1)
  lengths = {"a": 16, "b": 9}
  rows = {k: tf.ragged.constant([rng.integers(1, 30, rng.integers(1, 6)).tolist() for _ in range(400)])
          for k in lengths}
  examples = tf.data.Dataset.from_tensor_slices(rows)
  seqio_iterator = iter(seqio.utils.trim_and_pack_dataset(examples, lengths).batch(4))
  for _ in range(7):
    next(seqio_iterator)
  tf.train.Checkpoint(iterator=seqio_iterator).write(str(tmp_path / "position"))
  ours = iter(packing.trim_and_pack_dataset(examples, lengths).batch(4))
  tf.train.Checkpoint(iterator=ours).read(str(tmp_path / "position")).assert_consumed()
  for _ in range(5):
    want, got = next(seqio_iterator), next(ours)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_bert_converter_with_mask_rate_sizes_predictions_to_what_a_row_can_hold():
  lengths = BertFeatureConverter.task_feature_lengths(128, 20)
  packed = BertFeatureConverter(pack=True, mask_rate=0.15).get_model_feature_lengths(lengths)
  assert packed["masked_positions"] == 21  # not 20 * S = 80 (S = 4)
  unpacked = BertFeatureConverter(pack=False, mask_rate=0.15).get_model_feature_lengths(lengths)
  assert unpacked["masked_positions"] == 20
  # No prediction is lost and rows hold as many examples as without the bound.
  vocab = vocabularies.get_vocabulary(ml_collections.ConfigDict({"kind": "default", "path": "", "extra_ids": 0}))
  docs = [[corpora.sentence_text(s) for s in doc] for doc in corpora.generate_documents(40, seed=5)]
  ds = _dataset([{"doc_index": np.int64(i), "sentences": s} for i, s in enumerate(docs)],
                {"doc_index": tf.TensorSpec([], tf.int64), "sentences": tf.TensorSpec([None], tf.string)})
  mlm = ml_collections.ConfigDict(dict(mask_rate=0.15, mask_token_ratio=0.8, random_token_ratio=0.1,
                                       whole_word=False, max_predictions=20, sentence_task="nsp"))
  examples = preprocessors.bert_pretraining(ds, vocab=vocab, sequence_length=64, mlm_cfg=mlm, seed=0)
  predictions = sum(int(ex["masked_weights"].sum()) for ex in examples.as_numpy_iterator())
  rows = {rate: list(BertFeatureConverter(pack=True, mask_rate=rate)(
      examples, BertFeatureConverter.task_feature_lengths(128, 20)).as_numpy_iterator())
          for rate in (None, 0.15)}
  assert rows[0.15][0]["masked_positions"].shape == (21,)
  assert sum(int(r["masked_weights"].sum()) for r in rows[0.15]) == predictions
  # The same rows as unbounded, padded to 21 predictions instead of 80.
  assert len(rows[0.15]) == len(rows[None])
  for bounded, unbounded in zip(rows[0.15], rows[None]):
    for k, v in bounded.items():
      np.testing.assert_array_equal(v, unbounded[k][:v.shape[0]], err_msg=k)
      assert not unbounded[k][v.shape[0]:].any(), k


@pytest.mark.parametrize("length,rows,rate,cap", [(24, 3, 0.15, 20), (30, 4, 0.3, 20), (20, 2, 0.5, 3)])
def test_most_predictions_per_row_is_the_most_any_split_of_a_row_gives(length, rows, rate, cap):
  def predictions(n):  # bert_pretraining's count for n non-special tokens (tf.round in float32)
    return min(cap, max(1, int(np.round(np.float32(n) * np.float32(rate)))))
  def most(tokens, examples):  # every split into examples of n + 2 tokens ([CLS] ... [SEP])
    if examples == 0 or tokens < 2:
      return 0
    return max([most(tokens, examples - 1)] + [predictions(n) + most(tokens - n - 2, examples - 1)
                                               for n in range(tokens - 1)])
  assert mlm_objective.most_predictions_per_row(length, rows, rate, cap) == most(length, rows)
