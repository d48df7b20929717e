"""Attention entropy per layer and head: how spread out is each head's attention?

    dict(AttentionEntropy(subject, text).run(state))
    # {'layer_1/head_1': 1.93, ..., 'layer_1/mean': 1.71, 'uniform_baseline': 2.48}

Entropy in nats of each query's attention distribution over the keys it may see, averaged over
the non-padding tokens of clean probe rows, [CLS]/[SEP] and EOS included (BERT, T5 and BART
encoders; GPT's causal decoder).
`uniform_baseline` is the entropy of attending uniformly (log of the number of visible keys,
averaged the same way): with learned positions heads start at it and fall as they learn to
focus; ALiBi's distance penalty (the tiny BERT's) starts them below it, looking nearby.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ssl_jax.probes import data
from ssl_jax.probes import representations
from ssl_jax.probes.subject import PRETRAINING_OBJECTIVES
from ssl_jax.probes.subject import Subject


class AttentionEntropy:
  """Mean attention entropy per (layer, head) over the first `max_sentences` probe sentences.
  Names: `layer_<i>/head_<j>` (1-based), `layer_<i>/mean`, `uniform_baseline`."""
  name = "attention_entropy"
  objectives = PRETRAINING_OBJECTIVES
  needs = ""

  def __init__(self, subject: Subject, text: data.ProbeText, max_sentences: int = 128):
    self.subject = subject
    rows = representations.clean_rows(subject, text)
    keep = slice(0, max_sentences)
    self.tokens, self.segment_ids = rows.tokens[keep], rows.segment_ids[keep]
    lengths = self.segment_ids.sum(1, keepdims=True)
    positions = np.arange(self.tokens.shape[1])[None]
    visible = np.broadcast_to(positions + 1 if subject.name == "causal_lm" else lengths,
                              self.tokens.shape)
    self.queries = self.segment_ids > 0   # [R, L]
    self.uniform = float(np.log(visible[self.queries]).mean())

  def run(self, state) -> Iterator[tuple[str, float]]:
    """(name, value) pairs for the params of `state` (a TrainState or a params tree)."""
    probs = representations.batched(
        lambda t, s: self.subject.attention_probs(state, t, s), self.tokens, self.segment_ids,
        axis=1).astype(np.float64)                                   # [layers, R, N, L, L]
    entropy = -(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(-1)   # [layers, R, N, L]
    weights = self.queries[None, :, None, :]
    mean = (entropy * weights).sum((1, 3)) / weights.sum((1, 3))           # [layers, N]
    for layer in range(mean.shape[0]):
      for head in range(mean.shape[1]):
        yield f"layer_{layer + 1}/head_{head + 1}", float(mean[layer, head])
      yield f"layer_{layer + 1}/mean", float(mean[layer].mean())
    yield "uniform_baseline", self.uniform
