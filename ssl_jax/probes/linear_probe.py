"""Layer-wise linear probes: how linearly decodable is a word's part of speech at each depth?

    probe = LinearProbe(subject, text)
    dict(probe.run(state))  # {'accuracy/token_embedding': .., 'accuracy/layer_1': .., ...}

A closed-form ridge classifier (one-hot targets, standardised features, float64 numpy: no
iterations, no randomness) is fitted per depth on the word vectors of
`representations.word_representations` (depth 0 = the input token embeddings).

Splits (`word_splits`, fixed by `seed`): every 5th sentence is test. A fifth of the word types
never reach the training set: `accuracy_unseen_words/<depth>` is accuracy on them (and on the
types that occur only in test sentences), so it asks whether a representation encodes part of
speech in a way that generalises to new words (from context and shared structure) rather than
memorising each word's tag -- in the default corpus every spelling has one tag, so
`accuracy/<depth>`, on test-sentence words whose type the probe trained on, can be reached by
memorising. Each split has its own baseline, the training words' most frequent tag predicted
everywhere: `majority_baseline` (test) and `majority_baseline_unseen_words`. `word_type_baseline`
is the memorising one, each test word's type's most frequent training tag: a representation whose
`accuracy/<depth>` stays below it does not even tell its words apart. The held-out types
are mostly open-class words, so the second is the higher (0.26 vs 0.14 on 128 default-corpus
sentences), and it swings with `seed`: one frequent held-out type can be a third of the split.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ssl_jax.probes import data
from ssl_jax.probes import representations
from ssl_jax.probes.subject import PRETRAINING_OBJECTIVES
from ssl_jax.probes.subject import Subject

TEST_EVERY = 5
HELDOUT_TYPE_FRACTION = 0.2


def ridge_fit(features: np.ndarray, labels: np.ndarray, num_classes: int,
              l2: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(weights [E + 1, C], mean [E], scale [E]) of ridge regression onto one-hot labels.

  Features are standardised with their training mean and scale; the bias is not penalised
  (it is the column of ones, and the targets' mean is what it fits).
  """
  x = features.astype(np.float64)
  mean, scale = x.mean(0), x.std(0) + 1e-6
  x = (x - mean) / scale
  x = np.concatenate([x, np.ones((len(x), 1))], 1)
  y = np.eye(num_classes)[labels]
  penalty = l2 * np.eye(x.shape[1])
  penalty[-1, -1] = 0.0
  weights = np.linalg.solve(x.T @ x + penalty, x.T @ y)
  return weights, mean, scale


def ridge_predict(model, features: np.ndarray) -> np.ndarray:
  """Class index per row of `features` under a `ridge_fit` model."""
  weights, mean, scale = model
  x = (features.astype(np.float64) - mean) / scale
  return np.argmax(np.concatenate([x, np.ones((len(x), 1))], 1) @ weights, axis=1)


def word_splits(word_type: np.ndarray, sentence: np.ndarray, seed: int) -> dict[str, np.ndarray]:
  """Masks over the words: 'train' (not in every 5th sentence, type not held out), 'test' (in
  every 5th sentence, type in 'train') and 'unseen' (every other word: its type never reaches
  'train', being one of the held-out fifth or only in test sentences). Each word is in one."""
  types = np.unique(word_type)
  rng = np.random.default_rng(seed)
  heldout_types = rng.permutation(types)[:int(round(HELDOUT_TYPE_FRACTION * len(types)))]
  test = sentence % TEST_EVERY == 0
  train = ~test & ~np.isin(word_type, heldout_types)
  seen = np.isin(word_type, word_type[train])
  return {"train": train, "test": test & seen, "unseen": ~seen}


def word_type_baseline(pos: np.ndarray, word_type: np.ndarray,
                       split: dict[str, np.ndarray]) -> float:
  """Accuracy on the 'test' words of predicting each word's type's most frequent 'train' tag
  (ties: the lower tag index); a lookup table, the accuracy a probe reaches by memorising."""
  counts = np.zeros((int(word_type.max()) + 1, len(data.UPOS_TAGS)), np.int64)
  np.add.at(counts, (word_type[split["train"]], pos[split["train"]]), 1)
  test = split["test"]   # every test word's type trained ('test' is 'seen')
  return float(np.mean(counts[word_type[test]].argmax(1) == pos[test]))


class LinearProbe:
  """Part of speech from each depth's word vectors (see the module doc). Names:
  `accuracy/<depth>`, `accuracy_unseen_words/<depth>` with depth `token_embedding`,
  `layer_1`, ..., and `majority_baseline`, `majority_baseline_unseen_words`,
  `word_type_baseline`."""
  name = "linear_probe"
  objectives = PRETRAINING_OBJECTIVES
  needs = ""

  def __init__(self, subject: Subject, text: data.ProbeText, seed: int = 0, l2: float = 1.0):
    self.subject = subject
    self.rows = representations.clean_rows(subject, text)
    labels = representations.word_labels(self.rows)
    self.split = word_splits(labels["word_type"], labels["sentence"], seed)
    empty = [part for part in ("train", "test") if not self.split[part].any()]
    if empty:   # found before any step is probed; it failed in the fit, or wrote null
      raise ValueError(
          f"linear_probe: the {len(text)} probe sentences leave no {' and no '.join(empty)} "
          f"words (every {TEST_EVERY}th sentence is test, and {HELDOUT_TYPE_FRACTION:.0%} of the "
          "word types never train); probe more sentences (--probe_sentences, or a longer "
          "--conllu file).")
    self.l2 = l2
    self.word_type_baseline = word_type_baseline(labels["pos"], labels["word_type"], self.split)

  def run(self, state) -> Iterator[tuple[str, float]]:
    """(name, value) pairs for the params of `state` (a TrainState or a params tree)."""
    words = representations.word_representations(self.subject, state, self.rows)
    split = self.split
    labels = words.pos
    num_classes = len(data.UPOS_TAGS)
    majority = np.bincount(labels[split["train"]], minlength=num_classes).argmax()
    yield "majority_baseline", float(np.mean(labels[split["test"]] == majority))
    yield "word_type_baseline", self.word_type_baseline
    if split["unseen"].any():
      yield "majority_baseline_unseen_words", float(np.mean(labels[split["unseen"]] == majority))
    for depth, vectors in zip(words.layer_names, words.layers):
      model = ridge_fit(vectors[split["train"]], labels[split["train"]], num_classes, self.l2)
      for metric, part in (("accuracy", "test"), ("accuracy_unseen_words", "unseen")):
        if split[part].any():
          hits = ridge_predict(model, vectors[split[part]]) == labels[split[part]]
          yield f"{metric}/{depth}", float(hits.mean())
