"""Token-prediction probes: accuracy by part of speech and word frequency, loss by corruption.

    probe = PosAccuracy(subject, text)
    for name, value in probe.run(state):     # ('accuracy/NOUN', 0.41), ('loss/NOUN', 2.3), ...
      ...

All three score the probe batches of `predictions.build` (the objective's own corruption of the
probe sentences) with dropout off; which slots count, and how they are grouped, differs. A slot is
one predicted token: a word of several pieces has that many slots in its groups.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ssl_jax.probes import data
from ssl_jax.probes import predictions
from ssl_jax.probes.subject import PRETRAINING_OBJECTIVES
from ssl_jax.probes.subject import Subject

SPAN_BUCKETS = (1, 2, 3, 4, 5)   # the last bucket is "5 or longer"


def _grouped(loss, correct, groups: list[tuple[str, np.ndarray]]) -> Iterator[tuple[str, float]]:
  """('accuracy/<name>', mean correct) and ('loss/<name>', mean loss) for each non-empty group."""
  for name, mask in groups:
    if mask.any():
      yield f"accuracy/{name}", float(correct[mask].mean(dtype=np.float64))
      yield f"loss/{name}", float(loss[mask].mean(dtype=np.float64))


class _TokenProbe:
  """Scores one fixed probe batch; subclasses say which slots form which groups."""
  name = ""
  objectives: tuple[str, ...] = PRETRAINING_OBJECTIVES
  needs = ""
  kind_ratios = None

  def __init__(self, subject: Subject, text: data.ProbeText, seed: int = 0):
    self.subject = subject
    self.preds = predictions.build(subject, text, seed, kind_ratios=self.kind_ratios)
    self.groups = [(name, mask) for name, mask in self._groups() if mask.any()]

  def _groups(self) -> list[tuple[str, np.ndarray]]:
    raise NotImplementedError

  def run(self, state) -> Iterator[tuple[str, float]]:
    """(name, value) pairs for the params of `state` (a TrainState or a params tree)."""
    loss, correct, _ = predictions.score(self.subject, state, self.preds)
    yield from _grouped(loss, correct, self.groups)


class PosAccuracy(_TokenProbe):
  """Accuracy and loss of predicting corrupted words, per UPOS tag and per frequency bucket.

  BERT predicts words replaced by [MASK] (every word once); GPT predicts every next token; T5
  the tokens of its noise spans; BART the tokens inside its infilled spans. Names:
  `accuracy/<UPOS>`, `loss/<UPOS>`, `accuracy/rank_0_50` (frequency buckets, see
  data.FREQUENCY_EDGES), `accuracy/all`, `loss/all`.

  Early in training a model predicts one token nearly everywhere ('.', later 'the'); a class
  whose words are often that token then scores well without the model having learned anything
  about it. So each checkpoint also reports that baseline: `top_prediction_share` (the share of
  scored slots given the model's most frequent prediction) and `constant/<group>` (the accuracy
  of predicting that token at every slot). Learning shows as accuracy above `constant/`.
  """
  name = "pos_accuracy"
  kind_ratios = (1.0, 0.0)   # every chosen word becomes [MASK]

  def run(self, state) -> Iterator[tuple[str, float]]:
    loss, correct, predicted = predictions.score(self.subject, state, self.preds)
    yield from _grouped(loss, correct, self.groups)
    scored = self.groups[-1][1]   # 'all'
    ids, counts = np.unique(predicted[scored], return_counts=True)
    top = ids[np.argmax(counts)]
    yield "top_prediction_share", float(counts.max() / counts.sum())
    constant = self.preds.batch[self.subject.targets_key] == top
    for name, mask in self.groups:
      yield f"constant/{name}", float(constant[mask].mean(dtype=np.float64))

  def _groups(self):
    p = self.preds
    scored = p.counts_for_pos & (p.weights > 0)
    groups = [(tag, scored & (p.pos == i)) for i, tag in enumerate(data.UPOS_TAGS)]
    names = data.frequency_bucket_names()
    groups += [(bucket, scored & (p.frequency == i)) for i, bucket in enumerate(names)]
    return groups + [("all", scored)]


class MaskingKindLoss(_TokenProbe):
  """BERT's loss and accuracy by how a predicted position was corrupted: replaced by [MASK],
  by a random token, or kept (config.data.mlm's 80/10/10). Names: `loss/masked`,
  `accuracy/random`, ..."""
  name = "masking_kind_loss"
  objectives = ("mlm",)
  needs = "needs BERT's masked / random / kept corruption, i.e. objective 'mlm'"

  def _groups(self):
    p = self.preds
    return [(kind, (p.weights > 0) & (p.kind == k))
            for k, kind in predictions.KIND_NAMES.items()]


class SpanLengthLoss(_TokenProbe):
  """Loss and accuracy of the tokens inside noise spans, by span length (1, 2, 3, 4, 5+), and
  of the other target tokens: T5's sentinels and EOS (`outside_spans`), BART's copied tokens
  and EOS. Names: `loss/span_1`, ..., `loss/span_5+`, `loss/outside_spans`."""
  name = "span_length_loss"
  objectives = ("span_corruption", "denoising")
  needs = ("needs noise spans, i.e. objective 'span_corruption' (T5) or 'denoising' "
           "(BART)")

  def _groups(self):
    p = self.preds
    real = p.weights > 0
    groups = []
    for length in SPAN_BUCKETS:
      last = length == SPAN_BUCKETS[-1]
      in_bucket = (p.span_length >= length) if last else (p.span_length == length)
      groups.append((f"span_{length}{'+' if last else ''}", real & in_bucket))
    return groups + [("outside_spans", real & (p.span_length == 0))]
