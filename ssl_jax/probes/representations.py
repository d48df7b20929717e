"""Clean (uncorrupted) probe rows and per-word representations at every layer.

    rows = representations.clean_rows(subject, text)
    words = representations.word_representations(subject, params, rows)
    words.layers        # [num_layers + 1, num_words, E]: token embeddings, then each layer's output
    words.pos, words.word_type, words.sentence, words.frequency   # [num_words] labels

A row is one sentence framed as the objective frames its inputs: `[CLS] words [SEP]` (BERT),
`BOS words` with BOS = id 0 as seqio's LM converter shifts it in (GPT), `words EOS` (T5, BART
encoders). A word's vector is the mean over its tokens. Rows are padded to a multiple of 16
tokens and run in batches of `BATCH_ROWS`, so each read-out compiles once per probe text.
"""
from __future__ import annotations

import dataclasses
from typing import Callable
import weakref

import jax
import numpy as np

from ssl_jax.probes import data
from ssl_jax.probes.subject import Subject
from ssl_jax.probes.subject import params_of

BATCH_ROWS = 64
_LENGTH_MULTIPLE = 16


@dataclasses.dataclass(frozen=True)
class Rows:
  """Model input rows [R, L] built from a ProbeText; `token_index` [R, L] is the index of each
  position's token in its sentence's `text.tokens[s]` (-1 on framing tokens and padding)."""
  text: data.ProbeText
  tokens: np.ndarray
  segment_ids: np.ndarray
  sentence: np.ndarray  # [R] the sentence each row holds
  token_index: np.ndarray


def padded_length(length: int, limit: int) -> int:
  return min(limit, -(-length // _LENGTH_MULTIPLE) * _LENGTH_MULTIPLE)


def frame(subject: Subject) -> tuple[list[int], list[int]]:
  """(prefix, suffix) token ids around a sentence in the probed stack's input."""
  special = subject.special
  if subject.name == "mlm":
    return [special.cls], [special.sep]
  if subject.name == "causal_lm":
    return [0], []
  return [], [] if special.eos is None else [special.eos]


def clean_rows(subject: Subject, text: data.ProbeText) -> Rows:
  """One row per sentence (its whole words within the model's positions: `data.fit`), framed as in
  the module doc."""
  prefix, suffix = frame(subject)
  text = data.fit(text, subject.sentence_tokens)
  rows, index = [], []
  for tokens in text.tokens:
    tokens = list(tokens)
    rows.append(prefix + tokens + suffix)
    index.append([-1] * len(prefix) + list(range(len(tokens))) + [-1] * len(suffix))
  length = padded_length(max(map(len, rows)), subject.max_length)
  out_tokens = np.zeros((len(rows), length), np.int32)
  out_index = np.full((len(rows), length), -1, np.int32)
  for r, (row, idx) in enumerate(zip(rows, index)):
    out_tokens[r, :len(row)] = row
    out_index[r, :len(idx)] = idx
  segment_ids = np.zeros_like(out_tokens)
  for r, row in enumerate(rows):
    segment_ids[r, :len(row)] = 1
  return Rows(text, out_tokens, segment_ids, np.arange(len(rows), dtype=np.int32), out_index)


def batched(fn: Callable, *arrays: np.ndarray, batch_rows: int = BATCH_ROWS,
            axis: int = 0) -> np.ndarray:
  """fn over row batches of `arrays` (padded with zero rows to `batch_rows`), concatenated
  along `axis` of fn's output and cut back to the real rows."""
  n = arrays[0].shape[0]
  outputs = []
  for start in range(0, n, batch_rows):
    chunk = [a[start:start + batch_rows] for a in arrays]
    real = chunk[0].shape[0]
    if real < batch_rows:
      chunk = [np.concatenate([c, np.zeros((batch_rows - real,) + c.shape[1:], c.dtype)])
               for c in chunk]
    out = fn(*chunk)
    outputs.append(np.take(out, np.arange(real), axis=axis))
  return np.concatenate(outputs, axis=axis)


@dataclasses.dataclass(frozen=True)
class WordRepresentations:
  """Per-word vectors at every depth and the words' labels (see the module doc)."""
  layers: np.ndarray      # [num_layers + 1, num_words, E] float32; 0 = token embeddings
  pos: np.ndarray         # [num_words] index into data.UPOS_TAGS
  word_type: np.ndarray   # [num_words] index into text.types
  frequency: np.ndarray   # [num_words] frequency bucket
  sentence: np.ndarray    # [num_words] the sentence each word is in

  @property
  def layer_names(self) -> list[str]:
    return ["token_embedding"] + [f"layer_{i}" for i in range(1, self.layers.shape[0])]


def _word_segments(rows: Rows):
  """(row, position) of every real token, the word (0..num_words-1) it averages into, and the
  per-word label arrays."""
  text = rows.text
  row_ids, positions, word_ids = [], [], []
  labels = {k: [] for k in ("pos", "word_type", "frequency", "sentence")}
  num_words = 0
  for r in range(rows.tokens.shape[0]):
    s = int(rows.sentence[r])
    where = np.flatnonzero(rows.token_index[r] >= 0)
    token_index = rows.token_index[r, where]
    words = text.word_index[s][token_index]
    first = np.r_[True, words[1:] != words[:-1]]
    row_ids.append(np.full(len(where), r))
    positions.append(where)
    word_ids.append(num_words + np.cumsum(first) - 1)
    num_words += int(first.sum())
    for k in ("pos", "word_type", "frequency"):
      labels[k].append(getattr(text, k)[s][token_index[first]])
    labels["sentence"].append(np.full(int(first.sum()), s))
  labels = {k: np.concatenate(v).astype(np.int32) for k, v in labels.items()}
  return np.concatenate(row_ids), np.concatenate(positions), np.concatenate(word_ids), labels


def word_labels(rows: Rows) -> dict[str, np.ndarray]:
  """The per-word labels of `rows` as `word_representations` gives them (pos, word_type,
  frequency, sentence), without running a model."""
  return _word_segments(rows)[3]


# The last result, for the probes that read one checkpoint: [subject, rows, params leaves,
# result], the subject and the leaves by weak reference. Holding the params would keep a whole
# model alive after its caller drops it; this way the result goes with them (a leaf's callback),
# and a freed object's reused id cannot match.
_last: list = []


def _same_rows(a: Rows, b: Rows) -> bool:
  # Each probe builds its own Rows of the shared ProbeText (`clean_rows`): equal, not identical.
  return a is b or (a.text is b.text and np.array_equal(a.tokens, b.tokens)
                    and np.array_equal(a.token_index, b.token_index))


def _same_leaves(refs: list[weakref.ref], leaves: list) -> bool:
  return len(refs) == len(leaves) and all(ref() is leaf for ref, leaf in zip(refs, leaves))


def word_representations(subject: Subject, params, rows: Rows) -> WordRepresentations:
  """Per-word vectors of `rows` under `params`. The last result is kept while `params` lives
  (several probes read the same checkpoint) and no longer: the cache holds no params."""
  params = params_of(params)
  leaves = jax.tree.leaves(params)
  if (_last and _last[0]() is subject and _same_rows(_last[1], rows)
      and _same_leaves(_last[2], leaves)):
    return _last[3]
  row_ids, positions, word_ids, labels = _word_segments(rows)
  states = batched(lambda t, s: subject.layer_states(params, t, s), rows.tokens,
                   rows.segment_ids, axis=1)                          # [layers, R, L, E]
  token_vectors = states[:, row_ids, positions]                        # [layers, T, E]
  embeddings = subject.token_embeddings(params)[rows.tokens[row_ids, positions]]
  token_vectors = np.concatenate([embeddings[None], token_vectors])   # [layers + 1, T, E]
  num_words = int(word_ids.max()) + 1
  sums = np.zeros((token_vectors.shape[0], num_words, token_vectors.shape[2]), np.float64)
  np.add.at(sums, (slice(None), word_ids), token_vectors)
  counts = np.bincount(word_ids, minlength=num_words)[None, :, None]
  result = WordRepresentations((sums / counts).astype(np.float32), **labels)
  _last[:] = [weakref.ref(subject), rows,
              [weakref.ref(leaf, lambda _: _last.clear()) for leaf in leaves], result]
  return result
