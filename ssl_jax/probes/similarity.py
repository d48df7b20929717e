"""Contextual-embedding similarity: the same word in different contexts vs different words.

    dict(ContextualSimilarity(subject, text).run(state))
    # {'same_word/layer_1': 0.83, 'different_word/layer_1': 0.41, 'gap/layer_1': 0.42, ...}

At every depth (0 = input token embeddings, where a word is the same vector everywhere),
`same_word` is the mean cosine similarity of one word type's vectors in two different
sentences, `different_word` that of two different words' vectors (Ethayarajh, 2019: the latter
measures anisotropy, so `gap` = same - different is the context-independence a layer keeps).
Pairs are drawn once, from `seed`, so every checkpoint is compared on the same pairs.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ssl_jax.probes import data
from ssl_jax.probes import representations
from ssl_jax.probes.subject import PRETRAINING_OBJECTIVES
from ssl_jax.probes.subject import Subject


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise cosine similarity of [..., N, E] arrays (float64)."""
  a, b = a.astype(np.float64), b.astype(np.float64)
  norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
  return (a * b).sum(-1) / np.maximum(norms, 1e-12)


def draw_pairs(word_type: np.ndarray, sentence: np.ndarray, num_pairs: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
  """([num_pairs, 2] same-type pairs from different sentences, [num_pairs, 2] pairs of
  different types), as word indices; fewer same-type pairs when the text has fewer."""
  rng = np.random.default_rng(seed)
  by_type: dict[int, list[int]] = {}
  for i, t in enumerate(word_type):
    by_type.setdefault(int(t), []).append(i)
  repeated = [np.array(v) for _, v in sorted(by_type.items())
              if len(set(sentence[v].tolist())) > 1]
  same = []
  for _ in range(num_pairs * 4 if repeated else 0):   # rejection: the two must differ in sentence
    occurrences = repeated[rng.integers(len(repeated))]
    i, j = rng.choice(occurrences, 2, replace=False)
    if sentence[i] != sentence[j]:
      same.append((i, j))
      if len(same) == num_pairs:
        break
  different = rng.integers(len(word_type), size=(num_pairs * 2, 2))
  different = different[word_type[different[:, 0]] != word_type[different[:, 1]]][:num_pairs]
  return np.array(same, np.int64).reshape(-1, 2), different


class ContextualSimilarity:
  """Same word vs different words, per depth (see the module doc). Names:
  `same_word/<depth>`, `different_word/<depth>`, `gap/<depth>`."""
  name = "contextual_similarity"
  objectives = PRETRAINING_OBJECTIVES
  needs = ""

  def __init__(self, subject: Subject, text: data.ProbeText, num_pairs: int = 2000,
               seed: int = 0):
    self.subject = subject
    self.rows = representations.clean_rows(subject, text)
    self.num_pairs = num_pairs
    self.seed = seed
    self._pairs = None

  def run(self, state) -> Iterator[tuple[str, float]]:
    """(name, value) pairs for the params of `state` (a TrainState or a params tree)."""
    words = representations.word_representations(self.subject, state, self.rows)
    if self._pairs is None:   # labels do not depend on params: draw once
      self._pairs = draw_pairs(words.word_type, words.sentence, self.num_pairs, self.seed)
    same, different = self._pairs
    for depth, vectors in zip(words.layer_names, words.layers):
      if not len(same):
        continue
      s = float(cosine(vectors[same[:, 0]], vectors[same[:, 1]]).mean())
      d = float(cosine(vectors[different[:, 0]], vectors[different[:, 1]]).mean())
      yield f"same_word/{depth}", s
      yield f"different_word/{depth}", d
      yield f"gap/{depth}", s - d
