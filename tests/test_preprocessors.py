"""Pretraining preprocessors: noise statistics, literal examples, determinism and config errors."""
import collections

import ml_collections
import numpy as np
import pytest
import seqio
import tensorflow as tf

from ssl_jax.data import corpora, preprocessors, span_corruption, vocabularies

NUM_DOCUMENTS = 700  # ~28k tokens of the default corpus


def _documents(num_documents, seed=0):
  return [[corpora.sentence_text(s) for s in doc] for doc in corpora.generate_documents(num_documents, seed)]


def _sentence_dataset(docs, start=0):
  return tf.data.Dataset.from_generator(
      lambda: ({"doc_index": np.int64(i + start), "sentences": np.array(s, dtype=object)}
               for i, s in enumerate(docs)),
      output_signature={"doc_index": tf.TensorSpec([], tf.int64), "sentences": tf.TensorSpec([None], tf.string)})


def _text_dataset(docs):
  return tf.data.Dataset.from_generator(
      lambda: ({"doc_index": np.int64(i), "text": " ".join(s)} for i, s in enumerate(docs)),
      output_signature={"doc_index": tf.TensorSpec([], tf.int64), "text": tf.TensorSpec([], tf.string)})


def _mlm_cfg(**overrides):
  cfg = dict(mask_rate=0.15, mask_token_ratio=0.8, random_token_ratio=0.1, whole_word=False,
             max_predictions=20, sentence_task="nsp")
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def _denoising_cfg(**overrides):
  cfg = dict(mask_ratio=0.0, random_ratio=0.0, delete_ratio=0.0, infill_ratio=0.0, poisson_lambda=3.0,
             whole_word=False, permute_sentence_ratio=0.0, rotate_ratio=0.0)
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


@pytest.fixture(scope="module")
def vocab():
  return vocabularies.get_vocabulary(ml_collections.ConfigDict({"kind": "default", "path": "", "extra_ids": 100}))


@pytest.fixture(scope="module")
def ids(vocab):
  return vocabularies.special_ids(vocab)


@pytest.fixture(scope="module")
def docs():
  return _documents(NUM_DOCUMENTS)


def _bert(vocab, docs, sequence_length=64, seed=0, **cfg):
  ds = preprocessors.bert_pretraining(_sentence_dataset(docs), vocab=vocab, sequence_length=sequence_length,
                                      mlm_cfg=_mlm_cfg(**cfg), seed=seed)
  return list(ds.as_numpy_iterator())


def _bart(vocab, docs, sequence_length=128, **cfg):
  ds = preprocessors.bart_denoising(_sentence_dataset(docs), vocab=vocab, sequence_length=sequence_length,
                                    denoising_cfg=_denoising_cfg(**cfg), seed=0)
  return list(ds.as_numpy_iterator())


# ----------------------------------------------------------------------------- BERT


@pytest.fixture(scope="module")
def bert_nsp(vocab, docs):
  return _bert(vocab, docs, sentence_task="nsp")


def test_bert_masks_15_percent_with_80_10_10(bert_nsp, ids):
  content = sum(int(np.sum((e["input_tokens"] != ids.cls) & (e["input_tokens"] != ids.sep))) for e in bert_nsp)
  kinds = np.concatenate([e["masked_kinds"][e["masked_weights"] > 0] for e in bert_nsp])
  assert content >= 10_000
  assert abs(len(kinds) / content - 0.15) < 0.005
  fractions = np.bincount(kinds, minlength=4)[1:] / len(kinds)
  np.testing.assert_allclose(fractions, [0.8, 0.1, 0.1], atol=0.015)


def test_bert_masked_features_are_consistent(bert_nsp, ids, vocab):
  for e in bert_nsp:
    tokens, positions, kinds = e["input_tokens"], e["masked_positions"], e["masked_kinds"]
    assert len(tokens) <= 64 and len(positions) <= 20
    assert np.all(np.diff(positions) > 0)
    np.testing.assert_array_equal(tokens[positions[kinds == 1]], ids.mask)
    np.testing.assert_array_equal(tokens[positions[kinds == 3]], e["masked_targets"][kinds == 3])
    assert not np.isin(tokens[positions[kinds == 2]], [ids.cls, ids.sep, ids.mask, ids.pad]).any()
    assert not np.isin(e["masked_targets"], [ids.cls, ids.sep]).any()


def test_bert_pairs_have_bert_layout_and_nsp_labels(bert_nsp, ids):
  labels = []
  for e in bert_nsp:
    tokens, types = e["input_tokens"], e["token_type_ids"]
    seps = np.flatnonzero(tokens == ids.sep)
    assert tokens[0] == ids.cls and len(seps) == 2 and seps[1] == len(tokens) - 1
    np.testing.assert_array_equal(types, (np.arange(len(tokens)) > seps[0]).astype(np.int32))
    labels.append(e["sentence_label"])
  assert abs(np.mean(labels) - 0.5) < 0.05


def test_nsp_real_next_sentence_continues_the_document(bert_nsp, vocab, docs, ids):
  texts = {}
  for e in bert_nsp[:300]:
    i = int(e["doc_index"])
    doc = texts.setdefault(i, vocab.encode(" ".join(docs[i])))
    tokens = e["input_tokens"].copy()
    tokens[e["masked_positions"]] = e["masked_targets"]
    pair = tokens[1:-1][tokens[1:-1] != ids.sep].tolist()  # A's end and B's start survive truncation
    contiguous = any(doc[i:i + len(pair)] == pair for i in range(len(doc) - len(pair) + 1))
    assert contiguous == (e["sentence_label"] == 0)


def test_nsp_never_labels_the_same_document_as_a_random_next(vocab, docs):
  # B of a "random next" example comes from the previous document of the stream: with one
  # training document, read epoch after epoch, half the examples were labelled random next while B
  # was the same document's text.
  examples = _bert(vocab, [docs[0]] * 40 + docs[1:21])
  labels = [e["sentence_label"] for e in examples if e["doc_index"] < 40]
  assert len(labels) >= 40 and not any(labels)
  assert any(e["sentence_label"] for e in examples if e["doc_index"] >= 40)


def test_nsp_label_is_not_given_away_by_the_length_or_where_b_stops(vocab, docs):
  # Documents of ~8 default-corpus documents (~320 tokens), several chunks each. A random B that
  # always filled the row while a real B stopped at its chunk's last sentence end would let the
  # row's length or B's last token predict the label (86% accuracy before the fix).
  long_docs = [sum(docs[i:i + 8], []) for i in range(0, 640, 8)]
  examples = _bert(vocab, long_docs, sequence_length=128, sentence_task="nsp")
  labels = np.array([e["sentence_label"] for e in examples])
  lengths = np.array([len(e["input_tokens"]) for e in examples])
  period = vocab.encode(".")[-1]
  ends_sentence = []
  for e in examples:
    tokens = e["input_tokens"].copy()
    tokens[e["masked_positions"]] = e["masked_targets"]
    ends_sentence.append(tokens[-2] == period)
  ends_sentence = np.array(ends_sentence)
  assert abs(labels.mean() - 0.5) < 0.06
  best_by_length = max(np.mean((lengths >= t) == labels) for t in range(5, 130))
  assert best_by_length < 0.62, best_by_length
  assert abs(labels[ends_sentence].mean() - labels[~ends_sentence].mean()) < 0.2
  # One-sentence documents: the chunk splits in half, so the real B was about A's length and a
  # random B that filled the row twice that (a guess by B's length right 88% of the time).
  single = [[sentence] for doc in docs[:300] for sentence in doc][:600]
  examples = _bert(vocab, single, sequence_length=128, sentence_task="nsp")
  labels = np.array([e["sentence_label"] for e in examples])
  b_lengths = np.array([int(e["token_type_ids"].sum()) for e in examples])
  by_b_length = [np.mean((b_lengths >= t) == labels) for t in range(1, 64)]
  assert abs(labels.mean() - 0.5) < 0.06 and max(max(by_b_length), 1 - min(by_b_length)) < 0.6
  # Short documents (the default corpus's): the previous document often ran out before a random B
  # reached the real B's length, so random Bs were shorter (17 against 24 tokens on average).
  examples = _bert(vocab, docs[:600], sequence_length=128, sentence_task="nsp")
  labels = np.array([e["sentence_label"] for e in examples])
  b_lengths = np.array([int(e["token_type_ids"].sum()) for e in examples])
  assert abs(b_lengths[labels == 1].mean() - b_lengths[labels == 0].mean()) < 1.0
  by_b_length = [np.mean((b_lengths >= t) == labels) for t in range(1, 128)]
  assert max(max(by_b_length), 1 - min(by_b_length)) < 0.58, max(by_b_length)


def test_sop_swaps_half_of_the_pairs(vocab, docs, ids):
  examples = _bert(vocab, docs[:200], sequence_length=128, sentence_task="sop", whole_word=True)
  texts = dict(enumerate(vocabularies.encode_batch(vocab, [" ".join(d) for d in docs[:200]])))
  for e in examples:
    tokens = e["input_tokens"].copy()
    tokens[e["masked_positions"]] = e["masked_targets"]
    sep = int(np.flatnonzero(tokens == ids.sep)[0])
    a, b = tokens[1:sep].tolist(), tokens[sep + 1:-1].tolist()
    first, second = (b, a) if e["sentence_label"] == 1 else (a, b)
    doc = texts[int(e["doc_index"])]
    joined = first + second
    assert any(doc[i:i + len(joined)] == joined for i in range(len(doc) - len(joined) + 1))
  assert abs(np.mean([e["sentence_label"] for e in examples]) - 0.5) < 0.1


def test_bert_without_sentence_task_is_one_segment(vocab, docs, ids):
  examples = _bert(vocab, docs[:50], sequence_length=32, sentence_task="none")
  for e in examples:
    assert e["sentence_label"] == preprocessors.NO_SENTENCE_LABEL
    assert e["input_tokens"][0] == ids.cls and e["input_tokens"][-1] == ids.sep
    assert np.sum(e["input_tokens"] == ids.sep) == 1 and not e["token_type_ids"].any()
    assert len(e["input_tokens"]) <= 32


def test_whole_word_masking_masks_all_pieces_of_a_word(tmp_path, docs, ids):
  # A vocabulary without whole words for 'the', 'a' and 'is' forces '##' continuations.
  base = vocabularies.default_vocabulary_tokens()
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(t for t in base if t not in ("the", "a", "is")) + "\n")
  vocab = vocabularies.WordPieceVocabulary(str(path))
  examples = _bert(vocab, docs[:150], sequence_length=64, whole_word=True, mask_rate=0.3)
  continues = np.array([t.startswith("##") for t in vocab.tokens])
  split_words = 0
  for e in examples:
    tokens = e["input_tokens"].copy()
    tokens[e["masked_positions"]] = e["masked_targets"]
    masked = np.zeros(len(tokens), bool)
    masked[e["masked_positions"][e["masked_weights"] > 0]] = True
    cont = continues[tokens]
    cont[1:] &= ~np.isin(tokens[:-1], [ids.cls, ids.sep])  # a truncated segment may start mid-word
    # A continuation piece is masked exactly when the piece before it is.
    np.testing.assert_array_equal(masked[1:][cont[1:]], masked[:-1][cont[1:]])
    split_words += int(np.sum(cont & masked))
  assert split_words > 0


# ----------------------------------------------------------------------------- T5


def test_span_corruption_lengths_match_t5():
  assert span_corruption.span_corruption_lengths(512, 0.15, 3.0) == (568, 114)
  assert span_corruption.span_corruption_lengths(128, 0.15, 3.0) == (141, 29)  # 141 - 21 noise + 7 sentinels + EOS = 128


def test_span_corruption_statistics(vocab, ids, docs):
  ds = span_corruption.span_corruption(_text_dataset(docs), vocab=vocab, inputs_length=128, targets_length=32,
                                     noise_density=0.15, mean_span_length=3.0, seed=0)
  sentinels = np.array(ids.sentinels)
  noise = tokens = spans = 0
  for e in ds.as_numpy_iterator():
    inputs, targets = e["inputs"], e["targets"]
    assert len(inputs) <= 128 and len(targets) <= 32 and inputs[-1] == targets[-1] == ids.eos
    in_sentinels, out_sentinels = inputs[np.isin(inputs, sentinels)], targets[np.isin(targets, sentinels)]
    np.testing.assert_array_equal(in_sentinels, sentinels[:len(in_sentinels)])  # consecutive, in order
    np.testing.assert_array_equal(out_sentinels, in_sentinels)
    num_noise = len(targets) - 1 - len(out_sentinels)
    noise += num_noise
    tokens += num_noise + len(inputs) - 1 - len(in_sentinels)
    spans += len(out_sentinels)
  assert tokens >= 10_000
  assert abs(noise / tokens - 0.15) < 0.01
  assert abs(noise / spans - 3.0) < 0.2


def test_span_corruption_literal(vocab, ids):
  ds = tf.data.Dataset.from_tensors({"doc_index": tf.constant(0, tf.int64), "text": "the fox runs ."})
  [e] = list(span_corruption.span_corruption(ds, vocab=vocab, inputs_length=16, targets_length=8,
                                           noise_density=0.15, mean_span_length=3.0, seed=0).as_numpy_iterator())
  original = vocab.encode("the fox runs .")
  # One noise token (round(4 * 0.15) clipped to >= 1) in one span.
  s0 = ids.sentinels[0]
  assert len(e["targets"]) == 3 and e["targets"][0] == s0 and e["targets"][-1] == ids.eos
  restored = [e["targets"][1] if t == s0 else t for t in e["inputs"][:-1]]
  assert restored == original


def _restored(inputs, targets, sentinels):
  """The tokens a span-corrupted example came from: each sentinel in `inputs` replaced by its span."""
  spans, span = {}, None
  for t in targets[:-1]:
    if t in sentinels:
      span = spans.setdefault(t, [])
    else:
      span.append(t)
  return [x for t in inputs[:-1] for x in (spans[t] if t in sentinels else [t])]


@pytest.mark.parametrize("inputs_length, noise_density, mean_span_length",
                         [(172, 0.15, 3.0), (362, 0.15, 2.0), (9, 0.15, 3.0), (64, 0.5, 1.0)])
def test_span_corruption_makes_the_targets_it_sizes(vocab, ids, docs, inputs_length, noise_density,
                                                    mean_span_length):
  # 172 and 362: noise counts at .5 that float64 and float32 round apart; 9: one noise span clamped;
  # (0.5, 1.0): short last pieces (3, 7, ... tokens) with fewer non-noise tokens than spans.
  tokens_length, targets_length = span_corruption.span_corruption_lengths(
      inputs_length, noise_density, mean_span_length)
  long_docs = [sum(docs[i:i + 8], []) for i in range(0, 240, 8)]  # pieces of every length
  long_docs += [["the fox runs ."], ["a dog sat on the old boat ."]]  # 4 and 8 tokens
  ds = span_corruption.span_corruption(
      _text_dataset(long_docs), vocab=vocab, inputs_length=inputs_length,
      targets_length=targets_length, noise_density=noise_density,
      mean_span_length=mean_span_length, seed=0)
  sentinels = set(ids.sentinels)
  pieces = [vocab.encode(" ".join(doc)) for doc in long_docs]
  pieces = [p[i:i + tokens_length] for p in pieces for i in range(0, len(p), tokens_length)]
  examples = list(ds.as_numpy_iterator())
  assert len(examples) == len(pieces)
  longest = 0
  for e, piece in zip(examples, pieces):
    assert len(e["inputs"]) <= inputs_length and e["inputs"][-1] == e["targets"][-1] == ids.eos
    assert _restored(e["inputs"].tolist(), e["targets"].tolist(), sentinels) == piece
    longest = max(longest, len(e["targets"]))
  assert longest == targets_length  # full pieces make targets of exactly the sized length


# ----------------------------------------------------------------------------- BART


def test_bart_infilling_spans_have_poisson_mean(vocab, ids, docs):
  long_docs = [sum(docs[i:i + 4], []) for i in range(0, 400, 4)]  # ~150-token chunks
  examples = _bart(vocab, long_docs, sequence_length=256, infill_ratio=0.3)
  masks = removed = total = 0
  for e in examples:
    inputs, targets = e["inputs"][:-1], e["targets"][:-1]
    num_masks = int(np.sum(inputs == ids.mask))
    masks += num_masks
    removed += len(targets) - (len(inputs) - num_masks)
    total += len(targets)
  assert total >= 10_000
  assert abs(removed / total - 0.3) < 0.01
  assert abs(removed / masks - 3.0) < 0.2  # zero-length spans count: each inserts a mask


def test_bart_whole_word_infilling_spans_words(tmp_path, docs, ids):
  # fairseq's BART masks spans of whole words; spans of tokens left a word's '##' rest after its
  # [MASK] (4% of the masks on a BERT vocabulary) and counted 30% of the tokens, not the words.
  base = vocabularies.default_vocabulary_tokens()
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(t for t in base if t not in ("the", "a", "is")) + "\n")
  vocab = vocabularies.WordPieceVocabulary(str(path))
  continues = np.array([t.startswith("##") for t in vocab.tokens] + [False] * vocab.extra_ids)
  for whole_word in (False, True):
    examples = _bart(vocab, docs[:200], sequence_length=256, infill_ratio=0.3, whole_word=whole_word)
    split = words_right = 0
    for e in examples:
      inputs, targets = e["inputs"][:-1], e["targets"][:-1]
      after_mask = inputs[1:][inputs[:-1] == ids.mask]
      split += int(continues[after_mask].sum())
      num_words = int((~continues[targets]).sum())
      kept_words = int((~continues[inputs] & (inputs != ids.mask)).sum())
      words_right += kept_words == num_words - round(0.3 * num_words)
    if whole_word:
      assert split == 0 and words_right == len(examples)
    else:
      assert split > 20 and words_right < 0.5 * len(examples)


def test_bart_infilling_literal_keeps_order(vocab, ids):
  ds = tf.data.Dataset.from_tensors(
      {"doc_index": tf.constant(5, tf.int64), "sentences": tf.constant(["the fox runs .", "it sleeps ."])})
  cfg = _denoising_cfg(infill_ratio=0.3)
  [e] = list(preprocessors.bart_denoising(ds, vocab=vocab, sequence_length=32, denoising_cfg=cfg,
                                          seed=0).as_numpy_iterator())
  targets = e["targets"].tolist()
  assert targets == vocab.encode("the fox runs . it sleeps .") + [ids.eos]
  kept = [t for t in e["inputs"].tolist() if t != ids.mask]
  it = iter(targets)
  assert all(t in it for t in kept)  # the unmasked tokens are a subsequence of the original
  assert len(targets) - len(kept) == round(0.3 * 7)


def test_bart_infilling_masks_are_random_tokens_at_random_ratio(vocab, ids, docs):
  # fairseq's --mask-random applies to span masks and inserted ones (BART: --mask 0.3
  # --mask-random 0.1 --mask-length span-poisson); random_ratio had no effect on infilling.
  plain = _bart(vocab, docs[:300], infill_ratio=0.3)
  mixed = _bart(vocab, docs[:300], infill_ratio=0.3, random_ratio=0.1)
  masks = randoms = 0
  specials = {ids.pad, ids.eos, ids.unk, ids.cls, ids.sep, ids.mask, *ids.sentinels}
  for a, b in zip(plain, mixed):
    assert a["targets"].tolist() == b["targets"].tolist() and len(a["inputs"]) == len(b["inputs"])
    at_masks = a["inputs"] == ids.mask
    masks += int(at_masks.sum())
    replaced = at_masks & (b["inputs"] != ids.mask)
    randoms += int(replaced.sum())
    assert not set(b["inputs"][replaced].tolist()) & specials
    np.testing.assert_array_equal(a["inputs"][~at_masks], b["inputs"][~at_masks])
  assert masks > 1000 and abs(randoms / masks - 0.1) < 0.025, randoms / masks


def test_bart_deletion_and_masking_rates(vocab, ids, docs):
  deleted = _bart(vocab, docs[:300], delete_ratio=0.2)
  kept = sum(len(e["inputs"]) - 1 for e in deleted)
  total = sum(len(e["targets"]) - 1 for e in deleted)
  assert abs(1 - kept / total - 0.2) < 0.01
  for e in deleted:
    it = iter(e["targets"].tolist())
    assert all(t in it for t in e["inputs"].tolist())
  masked = _bart(vocab, docs[:300], mask_ratio=0.2, random_ratio=0.0)
  num_masks = sum(int(np.sum(e["inputs"] == ids.mask)) for e in masked)
  assert abs(num_masks / total - 0.2) < 0.01


def test_bart_permutation_and_rotation_keep_the_tokens(vocab, docs):
  permuted = _bart(vocab, docs[:100], permute_sentence_ratio=1.0)
  changed = 0
  for e, doc in zip(permuted, docs[:100]):
    sentences = [tuple(ids) for ids in vocabularies.encode_batch(vocab, doc)]
    assert len(e["inputs"]) == len(e["targets"])
    # Split the inputs back into sentences: same multiset as the document's.
    inputs, pieces = e["inputs"][:-1].tolist(), []
    while inputs:
      match = [s for s in sentences if tuple(inputs[:len(s)]) == s]
      assert match, "inputs are not a sequence of the document's sentences"
      pieces.append(match[0])
      inputs = inputs[len(match[0]):]
    assert collections.Counter(pieces) == collections.Counter(sentences)
    changed += pieces != sentences
  assert changed > 50
  rotated = _bart(vocab, docs[:100], rotate_ratio=0.5)
  num_rotated = 0
  for e in rotated:
    inputs, targets = e["inputs"][:-1].tolist(), e["targets"][:-1].tolist()
    rotations = [targets[k:] + targets[:k] for k in range(len(targets))]
    assert inputs in rotations
    num_rotated += inputs != targets
  assert 30 < num_rotated < 70


# ----------------------------------------------------------------------------- GPT


def test_causal_lm_literal():
  ds = tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[1, 2, 3, 4, 9], [5, 9]])).map(
      lambda t: {"targets": t})
  seqio.test_utils.assert_dataset(preprocessors.causal_lm(ds, sequence_length=3, pack=True),
                                  [{"targets": [1, 2, 3]}, {"targets": [4, 9]}, {"targets": [5, 9]}])
  seqio.test_utils.assert_dataset(preprocessors.causal_lm(ds, sequence_length=3, pack=False),
                                  [{"targets": [1, 2, 3]}, {"targets": [4, 9, 5]}, {"targets": [9]}])


# ----------------------------------------------------------------------------- determinism


def _by_key(examples, key_fields):
  return {tuple(np.asarray(e[f]).tobytes() for f in key_fields): e for e in examples}


def _assert_same_examples(a, b):
  assert a.keys() == b.keys()
  for k in a:
    for f in a[k]:
      np.testing.assert_array_equal(a[k][f], b[k][f], err_msg=f)


@pytest.mark.parametrize("objective", ["sop", "span_corruption", "denoising"])
def test_examples_do_not_depend_on_stream_or_parallelism(vocab, docs, objective):
  docs = docs[:60]

  def run(start, parallel, docs=docs):
    if objective == "sop":
      ds = preprocessors.bert_pretraining(_sentence_dataset(docs, start), vocab=vocab, sequence_length=48,
                                          mlm_cfg=_mlm_cfg(sentence_task="sop"), seed=7)
    elif objective == "span_corruption":
      ds = span_corruption.span_corruption(
          _text_dataset(docs).map(lambda e: dict(e, doc_index=e["doc_index"] + start)), vocab=vocab,
          inputs_length=32, targets_length=16, noise_density=0.15, mean_span_length=3.0, seed=7)
    else:
      ds = preprocessors.bart_denoising(
          _sentence_dataset(docs, start), vocab=vocab, sequence_length=48, seed=7,
          denoising_cfg=_denoising_cfg(mask_ratio=0.1, random_ratio=0.1, delete_ratio=0.1, infill_ratio=0.2,
                                       permute_sentence_ratio=0.5, rotate_ratio=0.5))
    options = tf.data.Options()
    options.deterministic = not parallel
    options.threading.private_threadpool_size = 2 if parallel else 1
    return list(ds.with_options(options).as_numpy_iterator())

  key = ("doc_index", "input_tokens") if objective == "sop" else ("doc_index", "targets")
  full = run(0, parallel=False)
  # The same documents in a shorter stream (as a later shard or a skipped stream sees them), read with
  # parallel, non-deterministic-order tf.data.
  tail = run(20, parallel=True, docs=docs[20:])
  _assert_same_examples(_by_key([e for e in full if e["doc_index"] >= 20], key), _by_key(tail, key))
  other_seed = {
      "sop": lambda: preprocessors.bert_pretraining(
          _sentence_dataset(docs), vocab=vocab, sequence_length=48, mlm_cfg=_mlm_cfg(sentence_task="sop"),
          seed=8)}.get(objective)
  if other_seed is not None:
    assert any(not np.array_equal(a["input_tokens"], b["input_tokens"])
               for a, b in zip(full, other_seed().as_numpy_iterator()))


# ----------------------------------------------------------------------------- errors


def test_too_short_sequences_raise_naming_the_setting(vocab, docs):
  ds = _sentence_dataset(docs[:2])
  with pytest.raises(ValueError, match="sequence_length=4.*nsp"):
    preprocessors.bert_pretraining(ds, vocab=vocab, sequence_length=4, mlm_cfg=_mlm_cfg(), seed=0)
  with pytest.raises(ValueError, match="sequence_length=2"):
    span_corruption.span_corruption(_text_dataset(docs[:2]), vocab=vocab, inputs_length=2, targets_length=8,
                                  noise_density=0.15, mean_span_length=3.0, seed=0)
  with pytest.raises(ValueError, match="targets_length=10.*>= 29"):
    span_corruption.span_corruption(_text_dataset(docs[:2]), vocab=vocab, inputs_length=128, targets_length=10,
                                  noise_density=0.15, mean_span_length=3.0, seed=0)
  with pytest.raises(ValueError, match="sequence_length=1"):
    preprocessors.bart_denoising(ds, vocab=vocab, sequence_length=1, denoising_cfg=_denoising_cfg(), seed=0)
  with pytest.raises(ValueError, match="sequence_length=1"):
    preprocessors.causal_lm(ds, sequence_length=1, pack=True)


def test_vocabularies_without_the_needed_ids_raise():
  byte_vocab = seqio.ByteVocabulary()
  ds = _sentence_dataset(_documents(2))
  with pytest.raises(ValueError, match="cls, sep, mask.*config.data.vocab"):
    preprocessors.bert_pretraining(ds, vocab=byte_vocab, sequence_length=64, mlm_cfg=_mlm_cfg(), seed=0)
  with pytest.raises(ValueError, match="mask.*config.data.vocab"):
    preprocessors.bart_denoising(ds, vocab=byte_vocab, sequence_length=64, seed=0,
                                 denoising_cfg=_denoising_cfg(infill_ratio=0.3))
  with pytest.raises(ValueError, match="sentinels.*extra_ids"):
    span_corruption.span_corruption(_text_dataset(_documents(2)), vocab=byte_vocab, inputs_length=64,
                                  targets_length=32, noise_density=0.15, mean_span_length=3.0, seed=0)
  few_sentinels = seqio.ByteVocabulary(extra_ids=3)
  with pytest.raises(ValueError, match="config.data.vocab.extra_ids to >= 7"):
    span_corruption.span_corruption(_text_dataset(_documents(2)), vocab=few_sentinels, inputs_length=128,
                                  targets_length=32, noise_density=0.15, mean_span_length=3.0, seed=0)


def test_bad_settings_and_inputs_raise(vocab):
  ds = _sentence_dataset(_documents(2))
  with pytest.raises(ValueError, match="config.data.mlm.sentence_task='next'"):
    preprocessors.bert_pretraining(ds, vocab=vocab, sequence_length=64, mlm_cfg=_mlm_cfg(sentence_task="next"),
                                   seed=0)
  with pytest.raises(ValueError, match="config.data.mlm.mask_rate=1.5"):
    preprocessors.bert_pretraining(ds, vocab=vocab, sequence_length=64, mlm_cfg=_mlm_cfg(mask_rate=1.5), seed=0)
  with pytest.raises(ValueError, match="config.data.denoising.rotate_ratio=2"):
    preprocessors.bart_denoising(ds, vocab=vocab, sequence_length=64, denoising_cfg=_denoising_cfg(rotate_ratio=2),
                                 seed=0)
  with pytest.raises(ValueError, match="lacks \\['sentences'\\]"):
    preprocessors.bert_pretraining(ds.map(lambda e: {"doc_index": e["doc_index"]}), vocab=vocab,
                                   sequence_length=64, mlm_cfg=_mlm_cfg(), seed=0)
