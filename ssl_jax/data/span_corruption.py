"""T5 span corruption (the `span_corruption` objective's examples), beside the other objectives'
corruptions in `ssl_jax.data.preprocessors`, whose shared pieces it uses."""
import seqio
import tensorflow as tf

from ssl_jax.data import vocabularies
# The corruption modules' shared pieces (seeding, EOS, input checks), private to ssl_jax.data.
from ssl_jax.data.preprocessors import AUTOTUNE
from ssl_jax.data.preprocessors import _as_written  # pylint: disable=protected-access
from ssl_jax.data.preprocessors import _check_dataset_fields  # pylint: disable=protected-access
from ssl_jax.data.preprocessors import _example_seeds  # pylint: disable=protected-access
from ssl_jax.data.preprocessors import _with_eos  # pylint: disable=protected-access


def span_corruption_lengths(inputs_length, noise_density, mean_span_length):
  """(tokens_length, targets_length): tokens per example before corruption so that, after corruption and
  EOS, the inputs fill `inputs_length`; and the targets' length then (T5's `random_spans_helper`).

  Raises:
    ValueError: naming the setting when `inputs_length` is too short or the rates are out of range.
  """
  if not 0.0 < noise_density < 1.0:
    raise ValueError(f"config.data.span_corruption.noise_density={noise_density!r}; it must be in (0, 1).")
  if mean_span_length < 1.0:
    raise ValueError(
        f"config.data.span_corruption.mean_span_length={mean_span_length!r}; it must be >= 1.")
  if inputs_length < 3:
    raise ValueError(
        f"config.data.sequence_length={inputs_length} is too short for span corruption: inputs need a "
        f"token, a sentinel and EOS (at least 3); raise sequence_length.")

  def lengths_after_corruption(tokens_length):
    num_noise, num_spans = map(int, _noise_counts(tokens_length, noise_density, mean_span_length))
    # inputs: non-noise tokens + a sentinel per span + EOS; targets: noise + a sentinel per span + EOS.
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

  tokens_length = inputs_length - 1
  while lengths_after_corruption(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  return tokens_length, lengths_after_corruption(tokens_length)[1]


def span_corruption(ds, *, vocab, inputs_length, targets_length, noise_density, mean_span_length, seed):
  """T5 span corruption: noise spans become sentinels in `inputs`; `targets` spell out the spans.

  Input documents: `doc_index` (int64), `text` (string). A document is tokenized and cut into pieces of
  `span_corruption_lengths(...)[0]` tokens (the last piece shorter); the packing feature converter
  fills rows with the short ones. Each piece gets round(length * noise_density) noise tokens in
  round(num_noise / mean_span_length) spans (T5's `random_spans_noise_mask`); span k is replaced by
  sentinel k of `vocabularies.special_ids(vocab).sentinels` in the inputs, and the targets are
  `sentinel_0 span_0 sentinel_1 span_1 ...`. Both end with EOS when the vocabulary has one.

  Example (noise 'quick brown' and 'dog'):
    {"text": "the quick brown fox jumps over a dog", "doc_index": 0} ->
    {"inputs": [the <s0> fox jumps over a <s1> EOS], "targets": [<s0> quick brown <s1> dog EOS]}

  Returns:
    Examples with int32 `inputs` (length <= inputs_length), `targets` (length <= targets_length) and
    `doc_index`.
  Raises:
    ValueError: naming the setting, for too short lengths, too few sentinels (extra ids) or input
      lacking the fields above.
  """
  tokens_length, needed_targets = span_corruption_lengths(inputs_length, noise_density, mean_span_length)
  if targets_length < needed_targets:
    raise ValueError(
        f"config.data.targets_length={targets_length} is too short: span corruption of "
        f"{inputs_length} inputs (noise_density={noise_density}, mean_span_length={mean_span_length}) "
        f"makes targets of {needed_targets} tokens; set targets_length >= {needed_targets}.")
  vocabularies.require(vocab, ("sentinels",), "span_corruption")
  _check_dataset_fields(ds, ("doc_index", "text"), "span_corruption")
  special = vocabularies.special_ids(vocab)
  max_spans = int(_noise_counts(tokens_length, noise_density, mean_span_length)[1])
  if max_spans > len(special.sentinels):
    raise ValueError(
        f"span corruption of {inputs_length} tokens makes up to {max_spans} spans but the vocabulary has "
        f"{len(special.sentinels)} sentinels; raise config.data.vocab.extra_ids to >= {max_spans}.")
  sentinels = tf.constant(special.sentinels, tf.int32)

  def pieces(ex):
    """A document -> its pieces of tokens_length tokens (a ragged batch), each with its index."""
    tokens = tf.cast(vocab.encode_tf(ex["text"]), tf.int32)
    starts = tf.range(0, tf.size(tokens), tokens_length)
    num_pieces = tf.size(starts)
    return {"doc_index": tf.fill([num_pieces], ex["doc_index"]),
            "piece_index": tf.range(num_pieces),
            "tokens": tf.RaggedTensor.from_row_lengths(
                tokens, tf.minimum(tokens_length, tf.size(tokens) - starts))}

  def corrupt(ex):
    tokens = ex["tokens"]
    seeds = _example_seeds(seed, ex["doc_index"], ex["piece_index"], 2)
    noise = _random_spans_noise_mask(tf.size(tokens), noise_density, mean_span_length, seeds)
    return {
        "doc_index": ex["doc_index"],
        "inputs": _with_eos(_spans_to_sentinels(tokens, noise, sentinels), special.eos),
        "targets": _with_eos(_spans_to_sentinels(tokens, tf.logical_not(noise), sentinels), special.eos),
    }

  # unbatch() rather than a flat_map of one small dataset per document: 3x the examples per second.
  # (The same change for BERT's and BART's chunks crashed TF 2.21 in unbatch; they keep flat_map.)
  ds = ds.map(_as_written(pieces), num_parallel_calls=AUTOTUNE).unbatch()
  return ds.map(_as_written(corrupt), num_parallel_calls=AUTOTUNE)


def _noise_counts(length, noise_density, mean_span_length):
  """(num_noise, num_spans) int32 tensors for a piece of `length` tokens (at least 2): T5's counts,
  in float32 as T5 rounds them. The mask and the length sizing above both use this function, so
  the targets it sizes are the targets the mask makes."""
  num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
  num_noise = tf.clip_by_value(num_noise, 1, length - 1)
  num_spans = tf.maximum(
      tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_span_length), tf.int32), 1)
  # Each span needs a non-noise token before it. T5 only sees full pieces; a document's short last
  # piece (e.g. 7 tokens at noise 0.5, mean span 1) can have fewer.
  return num_noise, tf.minimum(num_spans, length - num_noise)


def _random_spans_noise_mask(length, noise_density, mean_span_length, seeds):
  """T5's noise mask: bool [length], noise in round(num_noise / mean_span_length) spans, first span
  non-noise."""
  orig_length = length
  length = tf.maximum(length, 2)  # avoid degenerate one-token pieces, as T5 does
  num_noise, num_spans = _noise_counts(length, noise_density, mean_span_length)

  def random_segmentation(num_items, num_segments, seed):
    first_in_segment = tf.pad(
        seqio.utils.stateless_shuffle(tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32), seed),
        [[1, 0]])
    segment_id = tf.cumsum(first_in_segment)
    return tf.math.segment_sum(tf.ones_like(segment_id), segment_id)

  noise_lengths = random_segmentation(num_noise, num_spans, seeds[0])
  nonnoise_lengths = random_segmentation(length - num_noise, num_spans, seeds[1])
  interleaved = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [num_spans * 2])
  span_starts = tf.cumsum(interleaved)[:-1]
  span_start_indicator = tf.math.unsorted_segment_sum(tf.ones_like(span_starts), span_starts, length)
  is_noise = tf.equal(tf.cumsum(span_start_indicator) % 2, 1)
  return is_noise[:orig_length]


def _spans_to_sentinels(tokens, noise, sentinels):
  """Replaces each run of `noise` tokens by the next sentinel (T5's noise_span_to_unique_sentinel)."""
  previous_noise = tf.pad(noise[:-1], [[1, 0]])
  first = tf.logical_and(noise, tf.logical_not(previous_noise))
  subsequent = tf.logical_and(noise, previous_noise)
  span_number = tf.cumsum(tf.cast(first, tf.int32)) - 1
  sentinel = tf.gather(sentinels, tf.clip_by_value(span_number, 0, tf.size(sentinels) - 1))
  return tf.boolean_mask(tf.where(first, sentinel, tokens), tf.logical_not(subsequent))
