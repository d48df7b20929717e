"""Representation similarity across checkpoints: linear CKA of each layer's word vectors.

    probe = RepresentationCKA(subject, text, reference=final_params)
    for step in steps:
      dict(probe.run(restore(step)))   # {'vs_reference/layer_1': 0.62, 'vs_previous/layer_1': ..}

Linear CKA (Kornblith et al., 2019) compares two sets of vectors for the same words, invariant
to rotation and isotropic scaling: 1 = the same geometry. `vs_reference/<depth>` compares with
the reference checkpoint (the CLI passes the run's last one: when does a layer settle?);
`vs_previous/<depth>` with the state of the previous `run` call (absent on the first). Without
a reference, the first state run becomes it.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ssl_jax.probes import data
from ssl_jax.probes import representations
from ssl_jax.probes.subject import PRETRAINING_OBJECTIVES
from ssl_jax.probes.subject import Subject


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
  """Linear CKA of [N, D1] and [N, D2] (rows = the same N items), in [0, 1]."""
  x = x.astype(np.float64) - x.mean(0)
  y = y.astype(np.float64) - y.mean(0)
  cross = np.linalg.norm(x.T @ y) ** 2
  norms = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
  return float(cross / norms) if norms > 0 else 0.0


class RepresentationCKA:
  """Linear CKA per depth against a reference and the previous checkpoint (module doc).
  Names: `vs_reference/<depth>`, `vs_previous/<depth>`."""
  name = "cka"
  objectives = PRETRAINING_OBJECTIVES
  needs = ""

  def __init__(self, subject: Subject, text: data.ProbeText, reference=None):
    self.subject = subject
    self.rows = representations.clean_rows(subject, text)
    self._reference_params = reference
    self._reference = None
    self._previous = None

  def run(self, state) -> Iterator[tuple[str, float]]:
    """(name, value) pairs for the params of `state` (a TrainState or a params tree)."""
    words = representations.word_representations(self.subject, state, self.rows)  # cached first
    if self._reference is None:
      source = state if self._reference_params is None else self._reference_params
      self._reference = representations.word_representations(
          self.subject, source, self.rows).layers
    for i, depth in enumerate(words.layer_names):
      yield f"vs_reference/{depth}", linear_cka(words.layers[i], self._reference[i])
      if self._previous is not None:
        yield f"vs_previous/{depth}", linear_cka(words.layers[i], self._previous[i])
    self._previous = words.layers
