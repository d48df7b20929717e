"""Pretraining preprocessors: BERT pairs and masking, BART noise, GPT chunking (T5 span corruption,
built on the shared pieces here, is `ssl_jax.data.span_corruption`).

Each function maps a `tf.data.Dataset` of documents to a dataset of training examples, in the manner of
`seqio.preprocessors`: pure, lazy tf.data transformations that a `seqio.Task` lists as preprocessors
(bind the keyword arguments with `functools.partial`). Outputs are unpacked and unpadded; the objective's
feature converter packs and pads them.

Input documents carry `doc_index` (int64 scalar, unique per document) and, by function:
  `bert_pretraining`, `bart_denoising`: `sentences` (string vector: the document's sentences);
  `span_corruption.span_corruption`: `text` (string scalar);
  `causal_lm`: `targets` (int32 vector, already tokenized, ending in EOS so documents stay delimited).

Randomness is stateless and per example: every random op is seeded from (`seed`, `doc_index`, the
example's index within its document), so an example never depends on batching, sharding, parallelism or
thread timing. (`seqio.utils.map_over_dataset(num_seeds=...)` seeds by stream position instead, which
changes when a stream is skipped or sharded, so it is not used here.) One exception, by construction:
next-sentence prediction draws its random sentences from the previous document of the input stream.

A long document yields several examples: its sentences are packed greedily into chunks that fit the
sequence (a sentence longer than the whole budget is cut into budget-sized pieces).
"""
import functools
import math

import numpy as np
import seqio
import tensorflow as tf

from ssl_jax.data import vocabularies

AUTOTUNE = tf.data.AUTOTUNE
SENTENCE_TASKS = ("nsp", "sop", "none")
NO_SENTENCE_LABEL = -1  # `sentence_label` of examples built without a sentence task
# The map functions here use TF control flow only (tf.cond, tf.scan, tf.while_loop), so they are
# traced as written: AutoGraph's source rewrite would cost seconds at every pipeline start.
_as_written = tf.autograph.experimental.do_not_convert


# ----------------------------------------------------------------------------- shared pieces


def _example_seeds(seed, doc_index, example_index, num):
  """`num` independent stateless seeds for example `example_index` of document `doc_index`."""
  base = tf.stack([tf.constant(seed, tf.int64), tf.cast(doc_index, tf.int64)])
  folded = tf.random.experimental.stateless_fold_in(base, tf.cast(example_index, tf.int64))
  return tf.unstack(tf.random.experimental.stateless_split(folded, num))


def _encode_rows(vocab, strings):
  """Tokenizes a string vector into a RaggedTensor [rows, (tokens)] of int32."""
  if isinstance(vocab, seqio.ByteVocabulary):  # its encode_tf takes one string at a time
    return tf.map_fn(
        lambda s: tf.cast(vocab.encode_tf(s), tf.int32), strings,
        fn_output_signature=tf.RaggedTensorSpec([None], tf.int32, ragged_rank=0))
  return tf.cast(vocab.encode_tf(strings), tf.int32)


def _continues_word(vocab, setting="data.mlm.whole_word"):
  """Bool [vocab_size] constant: True for ids that continue the previous token's word.

  WordPiece: pieces starting with '##'; SentencePiece: pieces not starting with '▁' (a word start).
  """
  if isinstance(vocab, vocabularies.WordPieceVocabulary):
    pieces = list(vocab.tokens)
    table = [p.startswith("##") for p in pieces]
  elif isinstance(vocab, seqio.SentencePieceVocabulary):
    model = vocab.tokenizer
    table = [not (model.id_to_piece(i).startswith("▁") or model.is_control(i) or model.is_unknown(i))
             for i in range(model.get_piece_size())]
  else:
    raise ValueError(
        f"config.{setting}=True needs a WordPiece or SentencePiece vocabulary to find word "
        f"boundaries, but config.data.vocab gives {vocab!r}; set whole_word=False or change the vocabulary.")
  table += [False] * (vocab.vocab_size - len(table))  # extra ids
  return tf.constant(table, tf.bool)


def _cap_row_lengths(lengths, budget):
  """Row lengths after cutting every row into pieces of at most `budget`; empty rows are dropped."""
  lengths = tf.cast(lengths, tf.int64)
  row_ids = tf.repeat(tf.range(tf.size(lengths, out_type=tf.int64)), lengths)
  offset_in_row = tf.range(tf.reduce_sum(lengths)) - tf.gather(tf.cumsum(lengths, exclusive=True), row_ids)
  piece_ids = tf.cumsum(tf.cast(offset_in_row % budget == 0, tf.int64)) - 1
  return tf.math.segment_sum(tf.ones_like(piece_ids), piece_ids)


def _greedy_chunk_ids(lengths, budget):
  """Chunk id per row: rows join the current chunk while its total stays within `budget`."""
  def step(state, length):
    chunk, used = state
    new_chunk = tf.logical_and(used + length > budget, used > 0)
    return chunk + tf.cast(new_chunk, tf.int64), tf.where(new_chunk, length, used + length)
  zero = tf.constant(0, tf.int64)
  chunk_ids, _ = tf.scan(step, lengths, initializer=(zero, zero))
  return chunk_ids


def _tokenize_into_chunks(doc, *, vocab, budget, continues_word=None):
  """Tokenizes a document's `sentences` and groups them into chunks of at most `budget` tokens.

  Returns `doc_index`, `tokens` (all sentences, concatenated), `word_starts` (True on the first token of
  each word per `continues_word`, a bool table over ids; on every token without it), `lengths` (sentence
  lengths after capping), `chunk_ids` (per sentence) and `chunk_sizes` (tokens per chunk).
  """
  rows = _encode_rows(vocab, doc["sentences"])
  tokens = rows.flat_values
  if continues_word is None:
    word_starts = tf.ones_like(tokens, tf.bool)
  else:
    word_starts = tf.logical_not(tf.gather(continues_word, tokens))
  lengths = _cap_row_lengths(rows.row_lengths(), budget)
  chunk_ids = _greedy_chunk_ids(lengths, budget)
  return {
      "doc_index": doc["doc_index"], "tokens": tokens, "word_starts": word_starts,
      "lengths": lengths, "chunk_ids": chunk_ids,
      "chunk_sizes": tf.math.segment_sum(lengths, chunk_ids),
  }


def _one_element_per_chunk(doc, min_tokens):
  """A dataset with the document once per chunk of at least `min_tokens` tokens, with `chunk_index`."""
  chunk_index = tf.data.Dataset.range(tf.size(doc["chunk_sizes"], out_type=tf.int64)).filter(
      lambda i: doc["chunk_sizes"][i] >= min_tokens)
  return chunk_index.map(lambda i: dict(doc, chunk_index=i))


def _chunk(doc):
  """(tokens, word_starts, sentence lengths) of chunk `doc['chunk_index']`."""
  lengths, begin, end = _chunk_span(doc)
  return doc["tokens"][begin:end], doc["word_starts"][begin:end], lengths


def _chunk_span(doc):
  """(sentence lengths, first token, end token) of chunk `doc['chunk_index']` in the document."""
  in_chunk = tf.equal(doc["chunk_ids"], doc["chunk_index"])
  lengths = tf.boolean_mask(doc["lengths"], in_chunk)
  begin = tf.reduce_sum(tf.boolean_mask(doc["lengths"], doc["chunk_ids"] < doc["chunk_index"]))
  return lengths, begin, begin + tf.reduce_sum(lengths)


def _regular_ids(vocab, special):
  """Ids a 'random token' replacement may use: every id but pad/eos/unk/cls/sep/mask and sentinels."""
  excluded = [i for i in (special.pad, special.eos, special.unk, special.cls, special.sep, special.mask)
              if i is not None] + list(special.sentinels or ())
  return tf.constant(np.setdiff1d(np.arange(vocab.vocab_size), excluded), tf.int32)


def _random_choice(ids, shape, seed):
  return tf.gather(ids, tf.random.stateless_uniform(shape, seed, 0, tf.size(ids), tf.int32))


def _random_subset(n, count, seed):
  """Bool [n] with exactly `count` True entries at uniformly random positions."""
  ranks = tf.argsort(tf.argsort(tf.random.stateless_uniform([n], seed)))
  return ranks < count


def _check_rate(value, name, setting):
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{setting}={value!r} is not a fraction; `{name}` must be in [0, 1].")


def _check_dataset_fields(ds, fields, function):
  missing = [f for f in fields if f not in ds.element_spec]
  if missing:
    raise ValueError(
        f"{function} needs input fields {fields} but the dataset lacks {missing} (it has "
        f"{sorted(ds.element_spec)}); build documents with these fields (see ssl_jax.data.sources).")


def _with_eos(tokens, eos):
  return tokens if eos is None else tf.concat([tokens, [eos]], 0)


# ----------------------------------------------------------------------------- BERT


def bert_pretraining(ds, *, vocab, sequence_length, mlm_cfg, seed):
  """BERT examples: `[CLS] A [SEP] B [SEP]` (or `[CLS] A [SEP]`) with masked-LM predictions.

  Input documents: `doc_index` (int64), `sentences` (string vector). Each chunk of a document (see the
  module docstring) becomes one example; with a sentence task the chunk is split at a random sentence
  boundary (mid-chunk when it holds one sentence) into A and B:
    'nsp': B fills the row: the real B runs on past the chunk into the rest of the document; with
           probability 1/2 it is replaced by tokens of the previous document of the stream, starting
           at a random sentence; both candidates are first cut to the shorter one's length (so
           length and B's last token do not give the label away); `sentence_label` 1 = random,
           0 = real next.
    'sop': with probability 1/2, A and B swap; `sentence_label` 1 = swapped, 0 = original order.
    'none': one segment; `sentence_label` = NO_SENTENCE_LABEL (-1).
  Pairs longer than `sequence_length` lose tokens from the longer segment (A from its front, B from its
  end, so the A|B junction survives).

  Masking follows BERT: round(mask_rate * non-special tokens) predictions, at least 1, at most
  `max_predictions`; whole words when `whole_word` (a wordpiece starting with '##', or a SentencePiece
  piece without the word-start mark, stays with the piece before it), drawn in random order and skipped
  when they would overflow the budget. Each chosen token becomes [MASK] with probability
  `mask_token_ratio`, a random non-special token with `random_token_ratio`, else stays.

  Example (sentence_task='sop', swapped):
    {"doc_index": 3, "sentences": ["the fox runs .", "it sleeps ."]} ->
    {"input_tokens": [CLS it sleeps . SEP the [MASK] runs . SEP], "token_type_ids": [0 0 0 0 0 1 1 1 1 1],
     "masked_positions": [6], "masked_targets": [fox], "masked_weights": [1.], "masked_kinds": [1],
     "sentence_label": 1, "doc_index": 3}

  Args:
    ds: documents.
    vocab: a seqio.Vocabulary with [CLS], [SEP] and [MASK] (see `vocabularies.special_ids`).
    sequence_length: maximum example length (`config.data.sequence_length`).
    mlm_cfg: `config.data.mlm` (mask_rate, mask_token_ratio, random_token_ratio, whole_word,
      max_predictions, sentence_task).
    seed: int, the preprocessing seed.
  Returns:
    Examples with int32 `input_tokens`, `token_type_ids` (length <= sequence_length), `masked_positions`
    (ascending), `masked_targets`, `masked_kinds` (1 [MASK], 2 random, 3 kept), float32 `masked_weights`
    (length <= max_predictions; an example with no prediction, possible only with whole words, carries
    one entry of kind 0 and weight 0 so that packing keeps examples aligned), int32 scalar
    `sentence_label`, and `doc_index`.
  Raises:
    ValueError: naming the setting, for a bad `mlm_cfg`, a too short `sequence_length`, a vocabulary
      without the ids BERT needs, or input lacking the fields above.
  """
  task = mlm_cfg.sentence_task
  if task not in SENTENCE_TASKS:
    raise ValueError(f"config.data.mlm.sentence_task={task!r}; use one of {SENTENCE_TASKS}.")
  for name in ("mask_rate", "mask_token_ratio", "random_token_ratio"):
    _check_rate(mlm_cfg[name], name, f"config.data.mlm.{name}")
  if mlm_cfg.mask_token_ratio + mlm_cfg.random_token_ratio > 1.0:
    raise ValueError(
        f"config.data.mlm.mask_token_ratio + random_token_ratio = "
        f"{mlm_cfg.mask_token_ratio} + {mlm_cfg.random_token_ratio} exceeds 1; lower one of them.")
  if mlm_cfg.max_predictions < 1:
    raise ValueError(f"config.data.mlm.max_predictions={mlm_cfg.max_predictions}; it must be >= 1.")
  pair = task != "none"
  min_length = 5 if pair else 3
  if sequence_length < min_length:
    layout = "[CLS] A [SEP] B [SEP]" if pair else "[CLS] A [SEP]"
    raise ValueError(
        f"config.data.sequence_length={sequence_length} is too short for BERT with sentence_task="
        f"{task!r}: an example {layout} needs at least {min_length} tokens; raise sequence_length.")
  special = vocabularies.require(vocab, ("cls", "sep", "mask"), "mlm")
  _check_dataset_fields(ds, ("doc_index", "sentences"), "bert_pretraining")
  continues_word = _continues_word(vocab) if mlm_cfg.whole_word else None
  regular_ids = _regular_ids(vocab, special)
  budget = sequence_length - (3 if pair else 2)

  ds = ds.map(_as_written(functools.partial(_tokenize_into_chunks, vocab=vocab, budget=budget,
                                            continues_word=continues_word)),
              num_parallel_calls=AUTOTUNE)
  if task == "nsp":
    ds = ds.scan(_empty_document_state(), _attach_previous_document)
  ds = ds.flat_map(functools.partial(_one_element_per_chunk, min_tokens=2 if pair else 1))
  make = functools.partial(
      _bert_example, task=task, budget=budget, mlm_cfg=mlm_cfg, seed=seed, special=special,
      regular_ids=regular_ids)
  return ds.map(_as_written(make), num_parallel_calls=AUTOTUNE)


def _empty_document_state():
  return (tf.zeros([0], tf.int32), tf.zeros([0], tf.bool), tf.zeros([0], tf.int64))


def _attach_previous_document(previous, doc):
  """scan step: adds the previous document's tokens (the pool of random next sentences) to `doc`.

  The pool is empty (no random next) when the previous document is this one again: a split of
  one document read epoch after epoch (a text file of two), or a document repeated in the corpus.
  """
  tokens, word_starts, lengths = previous
  same = tf.cond(tf.size(tokens) == tf.size(doc["tokens"]),
                 lambda: tf.reduce_all(tf.equal(tokens, doc["tokens"])), lambda: tf.constant(False))
  keep = tf.where(same, 0, tf.size(tokens))
  out = dict(doc, other_tokens=tokens[:keep], other_word_starts=word_starts[:keep],
             other_lengths=lengths[:tf.where(same, 0, tf.size(lengths))])
  return (doc["tokens"], doc["word_starts"], doc["lengths"]), out


def _bert_example(doc, *, task, budget, mlm_cfg, seed, special, regular_ids):
  """One BERT example from chunk `doc['chunk_index']` (see `bert_pretraining`)."""
  seeds = _example_seeds(seed, doc["doc_index"], doc["chunk_index"], 7)
  tokens, starts, lengths = _chunk(doc)
  if task == "none":
    a, a_starts = tokens, starts
    b, b_starts = tokens[:0], starts[:0]
    label = tf.constant(NO_SENTENCE_LABEL, tf.int32)
  else:
    a, a_starts, b, b_starts, label = _sentence_pair(doc, tokens, starts, lengths, task, budget, seeds)
  first = lambda s: tf.concat([tf.ones_like(s[:1]), s[1:]], 0)  # a segment starts a word
  cls, sep = tf.constant([special.cls]), tf.constant([special.sep])
  true = tf.constant([True])
  if task == "none":
    input_tokens = tf.concat([cls, a, sep], 0)
    is_special = tf.concat([true, tf.zeros_like(a_starts), true], 0)
    word_starts = tf.concat([true, first(a_starts), true], 0)
  else:
    input_tokens = tf.concat([cls, a, sep, b, sep], 0)
    is_special = tf.concat([true, tf.zeros_like(a_starts), true, tf.zeros_like(b_starts), true], 0)
    word_starts = tf.concat([true, first(a_starts), true, first(b_starts), true], 0)
  token_type_ids = tf.concat(
      [tf.zeros([tf.size(a) + 2], tf.int32), tf.ones([tf.size(input_tokens) - tf.size(a) - 2], tf.int32)], 0)
  example = _mask_for_mlm(input_tokens, is_special, word_starts, mlm_cfg, seeds[4:7], special, regular_ids)
  example.update(token_type_ids=token_type_ids, sentence_label=label, doc_index=doc["doc_index"])
  return example


def _sentence_pair(doc, tokens, starts, lengths, task, budget, seeds):
  """(A, A word starts, B, B word starts, label) for 'nsp' or 'sop', truncated to `budget` tokens."""
  total = tf.size(tokens)
  boundaries = tf.cast(tf.cumsum(lengths)[:-1], tf.int32)  # sentence ends inside the chunk
  num_boundaries = tf.size(boundaries)
  pick = tf.random.stateless_uniform([], seeds[0], 0, tf.maximum(num_boundaries, 1), tf.int32)
  split = tf.where(num_boundaries > 0, tf.gather(tf.concat([boundaries, [0]], 0), pick), total // 2)
  a, a_starts, b, b_starts = tokens[:split], starts[:split], tokens[split:], starts[split:]
  label = tf.constant(0, tf.int32)
  if task == "nsp":
    # The real B runs on from A past the chunk into the rest of the document, up to the row's
    # room; the random B starts at a random sentence of the previous document. Both candidates are
    # cut to the shorter of the two before the label is drawn, so B's length never tells them
    # apart (BERT's random B fills the row: where a document's chunk is one sentence, split in half,
    # its real B is A's length and the random one twice that, a length-only guess right 88% of the
    # time on one-sentence documents; a random B cut short where the previous document runs out is
    # right 56% of the time on the default corpus).
    room = tf.cast(budget - split, tf.int64)
    end = _chunk_span(doc)[2]
    b = tf.concat([b, doc["tokens"][end:]], 0)[:room]
    b_starts = tf.concat([b_starts, doc["word_starts"][end:]], 0)[:room]
    other, other_lengths = doc["other_tokens"], doc["other_lengths"]
    has_other = tf.size(other) > 0
    is_random = tf.logical_and(tf.random.stateless_uniform([], seeds[1]) < 0.5, has_other)
    sentence = tf.random.stateless_uniform(
        [], seeds[2], 0, tf.maximum(tf.size(other_lengths), 1), tf.int32)
    other_begin = tf.gather(tf.concat([tf.cumsum(other_lengths, exclusive=True), [0]], 0), sentence)
    available = tf.size(other, out_type=tf.int64) - other_begin
    length = tf.where(has_other, tf.minimum(tf.size(b, out_type=tf.int64), available),
                      tf.size(b, out_type=tf.int64))
    b, b_starts = tf.cond(
        is_random,
        lambda: (other[other_begin:other_begin + length],
                 doc["other_word_starts"][other_begin:other_begin + length]),
        lambda: (b[:length], b_starts[:length]))
    label = tf.cast(is_random, tf.int32)
  # Cut the longer segment first (BERT's truncate_seq_pair), A from its front, B from its end.
  len_a, len_b = tf.size(a), tf.size(b)
  keep_a = tf.minimum(len_a, tf.maximum((budget + 1) // 2, budget - len_b))
  keep_b = tf.minimum(len_b, budget - keep_a)
  a, a_starts = a[len_a - keep_a:], a_starts[len_a - keep_a:]
  b, b_starts = b[:keep_b], b_starts[:keep_b]
  if task == "sop":
    swap = tf.random.stateless_uniform([], seeds[3]) < 0.5
    a, a_starts, b, b_starts = tf.cond(
        swap, lambda: (b, b_starts, a, a_starts), lambda: (a, a_starts, b, b_starts))
    label = tf.cast(swap, tf.int32)
  return a, a_starts, b, b_starts, label


def _mask_for_mlm(tokens, is_special, word_starts, mlm_cfg, seeds, special, regular_ids):
  """BERT's masked-LM corruption of `tokens`; returns the `input_tokens` and `masked_*` features."""
  candidate = tf.logical_not(is_special)
  word = tf.cumsum(tf.cast(tf.logical_or(word_starts, is_special), tf.int32)) - 1
  num_words = word[-1] + 1
  num_candidates = tf.reduce_sum(tf.cast(candidate, tf.int32))
  num_to_predict = tf.minimum(
      mlm_cfg.max_predictions,
      tf.maximum(1, tf.cast(tf.round(tf.cast(num_candidates, tf.float32) * mlm_cfg.mask_rate), tf.int32)))
  word_sizes = tf.math.unsorted_segment_sum(tf.cast(candidate, tf.int32), word, num_words)
  priority = tf.where(word_sizes > 0, tf.random.stateless_uniform([num_words], seeds[0]), 2.0)
  order = tf.argsort(priority)

  sizes_in_order = tf.gather(word_sizes, order)
  if mlm_cfg.whole_word:
    # BERT skips a word that would overflow the budget and tries the next one: a sequential scan.
    def take_word(state, size):
      count, _ = state
      take = tf.logical_and(size > 0, count + size <= num_to_predict)
      return tf.where(take, count + size, count), take
    _, taken = tf.scan(take_word, sizes_in_order, initializer=(tf.constant(0), tf.constant(False)))
  else:  # every candidate word is one token: take the first num_to_predict
    taken = tf.logical_and(sizes_in_order > 0, tf.cumsum(sizes_in_order) <= num_to_predict)
  word_taken = tf.scatter_nd(order[:, None], taken, [num_words])
  selected = tf.logical_and(tf.gather(word_taken, word), candidate)

  n = tf.shape(tokens)
  draw = tf.random.stateless_uniform(n, seeds[1])
  kinds = tf.where(draw < mlm_cfg.mask_token_ratio, 1,
                   tf.where(draw < mlm_cfg.mask_token_ratio + mlm_cfg.random_token_ratio, 2, 3))
  replacement = tf.where(kinds == 1, special.mask,
                         tf.where(kinds == 2, _random_choice(regular_ids, n, seeds[2]), tokens))
  positions = tf.cast(tf.where(selected)[:, 0], tf.int32)
  masked = {
      "masked_positions": positions,
      "masked_targets": tf.gather(tokens, positions),
      "masked_weights": tf.ones(tf.shape(positions), tf.float32),
      "masked_kinds": tf.gather(kinds, positions),
  }
  empty = {"masked_positions": tf.constant([0]), "masked_targets": tokens[:1],
           "masked_weights": tf.constant([0.0]), "masked_kinds": tf.constant([0])}
  masked = tf.cond(tf.size(positions) > 0, lambda: masked, lambda: empty)
  masked["input_tokens"] = tf.where(selected, replacement, tokens)
  return masked


# ----------------------------------------------------------------------------- BART


def bart_denoising(ds, *, vocab, sequence_length, denoising_cfg, seed):
  """BART noise: `inputs` = the noised chunk, `targets` = the original chunk; both end with EOS.

  Input documents: `doc_index` (int64), `sentences` (string vector). Noise, each with its setting in
  `config.data.denoising`, applied in this order (fairseq's DenoisingDataset order):
    permute_sentence_ratio: ceil(ratio * sentences) random sentences of the chunk change places.
    mask_ratio: round(ratio * tokens) tokens become [MASK].
    delete_ratio: round(ratio * tokens) tokens are removed.
    infill_ratio: spans covering round(ratio * tokens) tokens, with lengths ~ Poisson(poisson_lambda),
      are each replaced by one [MASK]; a zero-length span inserts a [MASK]. Spans do not overlap.
      With `whole_word` the spans count and cover words, never part of one (a WordPiece '##' piece
      or a SentencePiece piece without '▁' stays with the piece before it), as fairseq's BART.
    random_ratio: each [MASK] of masking and infilling is a random token instead with this
      probability (fairseq's --mask-random; configs/bart.py's base and large take BART's 0.1).
    rotate_ratio: with this probability the sequence is rotated to start at a random token.
  Inputs longer than the sequence (possible when many zero-length spans insert masks) lose their end.

  Example (infill_ratio only):
    {"sentences": ["the fox runs .", "it sleeps ."], "doc_index": 0} ->
    {"inputs": [the [MASK] runs . it [MASK] sleeps . EOS], "targets": [the fox runs . it sleeps . EOS]}

  Returns:
    Examples with int32 `inputs`, `targets` (length <= sequence_length) and `doc_index`.
  Raises:
    ValueError: naming the setting, for rates out of range, a too short `sequence_length`, a vocabulary
      without [MASK] (needed by masking and infilling) or input lacking the fields above.
  """
  cfg = denoising_cfg
  for name in ("mask_ratio", "random_ratio", "delete_ratio", "infill_ratio", "permute_sentence_ratio",
               "rotate_ratio"):
    _check_rate(cfg[name], name, f"config.data.denoising.{name}")
  if cfg.infill_ratio > 0 and not cfg.poisson_lambda > 0:
    raise ValueError(
        f"config.data.denoising.poisson_lambda={cfg.poisson_lambda!r}; span lengths ~ Poisson(lambda) "
        "need lambda > 0.")
  special = vocabularies.special_ids(vocab)
  if cfg.mask_ratio > 0 or cfg.infill_ratio > 0:
    vocabularies.require(vocab, ("mask",), "denoising")
  budget = sequence_length - (0 if special.eos is None else 1)
  if budget < 1:
    raise ValueError(
        f"config.data.sequence_length={sequence_length} is too short for denoising: it needs a token "
        "and EOS (at least 2); raise sequence_length.")
  _check_dataset_fields(ds, ("doc_index", "sentences"), "bart_denoising")
  regular_ids = _regular_ids(vocab, special)

  def noise(doc):
    seeds = _example_seeds(seed, doc["doc_index"], doc["chunk_index"], 12)
    original, starts, lengths = _chunk(doc)
    tokens = original
    if cfg.permute_sentence_ratio > 0:
      both = _permute_sentences(tf.stack([tokens, tf.cast(starts, tf.int32)], 1), lengths,
                                cfg.permute_sentence_ratio, seeds[0:2])
      tokens, starts = both[:, 0], tf.cast(both[:, 1], tf.bool)
    if cfg.mask_ratio > 0:
      masked = _random_subset(tf.size(tokens), _count(tokens, cfg.mask_ratio), seeds[2])
      use_random = tf.random.stateless_uniform(tf.shape(tokens), seeds[3]) < cfg.random_ratio
      replacement = tf.where(use_random, _random_choice(regular_ids, tf.shape(tokens), seeds[4]),
                             special.mask)
      tokens = tf.where(masked, replacement, tokens)
    if cfg.delete_ratio > 0:
      deleted = _random_subset(tf.size(tokens), _count(tokens, cfg.delete_ratio), seeds[5])
      tokens = tf.boolean_mask(tokens, tf.logical_not(deleted))
      starts = tf.boolean_mask(starts, tf.logical_not(deleted))
    if cfg.infill_ratio > 0:
      tokens = _infill(tokens, starts, cfg.infill_ratio, cfg.poisson_lambda, special.mask,
                       [seeds[i] for i in (6, 7, 8, 11)], cfg.random_ratio, regular_ids)
    if cfg.rotate_ratio > 0:
      tokens = _rotate(tokens, cfg.rotate_ratio, seeds[9:11])
    return {"doc_index": doc["doc_index"], "inputs": _with_eos(tokens[:budget], special.eos),
            "targets": _with_eos(original, special.eos)}

  continues_word = _continues_word(vocab, "data.denoising.whole_word") if cfg.whole_word else None
  ds = ds.map(_as_written(functools.partial(_tokenize_into_chunks, vocab=vocab, budget=budget,
                                            continues_word=continues_word)),
              num_parallel_calls=AUTOTUNE)
  ds = ds.flat_map(functools.partial(_one_element_per_chunk, min_tokens=1))
  return ds.map(_as_written(noise), num_parallel_calls=AUTOTUNE)


def _count(tokens, ratio):
  return tf.cast(tf.round(tf.cast(tf.size(tokens), tf.float32) * ratio), tf.int32)


def _permute_sentences(tokens, lengths, ratio, seeds):
  """Moves ceil(ratio * sentences) randomly chosen sentences of `tokens` ([n] or [n, k]: rows
  that move together) among their own places."""
  num_sentences = tf.size(lengths)
  num_moved = tf.cast(tf.math.ceil(tf.cast(num_sentences, tf.float32) * ratio), tf.int32)
  moved = tf.argsort(tf.random.stateless_uniform([num_sentences], seeds[0]))[:num_moved]
  order = tf.tensor_scatter_nd_update(
      tf.range(num_sentences), moved[:, None], seqio.utils.stateless_shuffle(moved, seeds[1]))
  return tf.gather(tf.RaggedTensor.from_row_lengths(tokens, lengths), order).flat_values


def _infill(tokens, word_starts, ratio, poisson_lambda, mask_id, seeds, random_ratio, regular_ids):
  """Text infilling: non-overlapping spans (lengths ~ Poisson) covering round(ratio * n) units each
  become one `mask_id`; zero-length spans insert one. A unit is a word (a token where
  `word_starts`, and the tokens after it up to the next start; fairseq's whole-word spans) or, with
  every token a start, a token. Each mask is a random token of `regular_ids` instead with
  probability `random_ratio`."""
  word_starts = tf.concat([[True], word_starts[1:]], 0)[:tf.size(tokens)]   # the first starts a unit
  unit = tf.cumsum(tf.cast(word_starts, tf.int32)) - 1     # unit index of each token
  unit_sizes = tf.math.segment_sum(tf.ones_like(unit), unit)
  n = tf.size(unit_sizes)
  num_noise = _count(unit_sizes, ratio)
  # Enough draws that their sum almost surely reaches num_noise; if not, all drawn spans are used.
  num_draws = num_noise * max(1, math.ceil(2.0 / poisson_lambda)) + 16
  draws = tf.random.stateless_poisson([num_draws], seeds[0], poisson_lambda, dtype=tf.int32)
  reached = tf.cumsum(draws) >= num_noise
  num_spans = tf.where(num_noise > 0,
                       tf.where(tf.reduce_any(reached),
                                tf.cast(tf.argmax(tf.cast(reached, tf.int32)), tf.int32) + 1, num_draws), 0)
  span_lengths = draws[:num_spans]
  span_lengths = tf.minimum(span_lengths, num_noise - tf.cumsum(span_lengths, exclusive=True))
  num_noise = tf.reduce_sum(span_lengths)
  num_kept = n - num_noise
  # Stars and bars: the masks take num_spans of the num_kept + num_spans output slots, uniformly.
  mask_slots = tf.sort(tf.argsort(tf.random.stateless_uniform([num_kept + num_spans], seeds[1]))[:num_spans])
  cuts = tf.concat([[0], mask_slots - tf.range(num_spans), [num_kept]], 0)
  gaps = cuts[1:] - cuts[:-1]  # non-noise units before each span, and after the last
  pieces = tf.reshape(tf.stack([gaps[:-1], span_lengths], axis=1), [-1])
  is_noise = tf.repeat(tf.tile([False, True], [num_spans]), pieces)
  is_noise = tf.concat([is_noise, tf.zeros([gaps[-1]], tf.bool)], 0)
  kept = tf.boolean_mask(tokens, tf.logical_not(tf.gather(is_noise, unit)))
  # Output slots (a mask, or a kept unit) -> output tokens: a mask is one token, a unit its own.
  is_mask_slot = tf.scatter_nd(mask_slots[:, None], tf.ones([num_spans], tf.bool),
                               [num_kept + num_spans])
  slot_sizes = tf.tensor_scatter_nd_update(
      tf.ones([num_kept + num_spans], tf.int32),
      tf.where(tf.logical_not(is_mask_slot)), tf.boolean_mask(unit_sizes, tf.logical_not(is_noise)))
  is_mask = tf.scatter_nd(tf.boolean_mask(tf.cumsum(slot_sizes, exclusive=True), is_mask_slot)[:, None],
                          tf.ones([num_spans], tf.bool), [tf.reduce_sum(slot_sizes)])
  kept_index = tf.maximum(tf.cumsum(tf.cast(tf.logical_not(is_mask), tf.int32)) - 1, 0)
  mask = tf.fill(tf.shape(is_mask), mask_id)
  if random_ratio > 0:
    mask = tf.where(tf.random.stateless_uniform(tf.shape(is_mask), seeds[2]) < random_ratio,
                    _random_choice(regular_ids, tf.shape(is_mask), seeds[3]), mask)
  return tf.where(is_mask, mask, tf.gather(tf.concat([kept, [mask_id]], 0), kept_index))


def _rotate(tokens, ratio, seeds):
  """With probability `ratio`, rotates `tokens` to start at a random token other than the first."""
  n = tf.size(tokens)
  rotate = tf.logical_and(tf.random.stateless_uniform([], seeds[0]) < ratio, n > 1)
  offset = tf.random.stateless_uniform([], seeds[1], 1, tf.maximum(n, 2), tf.int32)
  offset = tf.where(rotate, offset, 0)
  return tf.concat([tokens[offset:], tokens[:offset]], 0)


# ----------------------------------------------------------------------------- GPT


def causal_lm(ds, *, sequence_length, pack):
  """GPT examples `{"targets": ...}` of at most `sequence_length` tokens.

  Input: `targets` (int32 vector; tokenize with EOS so documents stay delimited).
    pack=True: each document is cut into pieces of `sequence_length` (the last shorter);
      `seqio.LMFeatureConverter(pack=True)` then packs pieces into rows with segment ids.
    pack=False: the documents' tokens are concatenated into one stream and cut into windows of exactly
      `sequence_length` (only the stream's last window is shorter), so no row holds padding.

  Example (sequence_length=3):
    [{"targets": [1, 2, 3, 4, EOS]}, {"targets": [5, EOS]}] ->
    pack=True:  [1 2 3], [4 EOS], [5 EOS]
    pack=False: [1 2 3], [4 EOS 5], [EOS]
  Raises:
    ValueError: for `sequence_length` < 2 or input without `targets`.
  """
  if sequence_length < 2:
    raise ValueError(
        f"config.data.sequence_length={sequence_length} is too short for causal_lm: predicting a next "
        "token needs at least 2; raise sequence_length.")
  _check_dataset_fields(ds, ("targets",), "causal_lm")
  tokens = ds.map(lambda ex: tf.cast(ex["targets"], tf.int32), num_parallel_calls=AUTOTUNE)
  if pack:
    pieces = tokens.flat_map(lambda t: tf.data.Dataset.from_tensor_slices(
        tf.RaggedTensor.from_row_lengths(t, _piece_lengths(tf.size(t), sequence_length))))
  else:
    pieces = tokens.unbatch().batch(sequence_length)
  return pieces.map(lambda t: {"targets": t}, num_parallel_calls=AUTOTUNE)


def _piece_lengths(n, piece_length):
  """Lengths of the pieces of `n` tokens cut every `piece_length`."""
  return _cap_row_lengths(tf.reshape(n, [1]), piece_length)
