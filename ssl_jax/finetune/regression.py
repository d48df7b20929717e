"""Objective 'regression': a sentence (pair) -> one real score (GLUE STS-B).

Rows as 'classification' with `targets` (float32) in place of labels. Loss: mean squared error
(as `transformers` for one output). Scores: Pearson and Spearman correlation.
"""
import functools

import numpy as np

from ssl_jax import objectives
from ssl_jax.finetune import classification
from ssl_jax.finetune import data
from ssl_jax.finetune import metrics
from ssl_jax.models import heads

FEATURES = {"targets": (False, np.float32), "weights": (False, np.float32)}


def featurize(config, vocab, examples, split=None) -> data.Rows:
  del split  # nothing to warn of: a pair longer than the row is cut as BERT cuts it
  arrays = classification.token_rows(config, vocab, examples)
  arrays["targets"] = np.asarray(classification.labels_of(examples), np.float32)
  arrays["weights"] = np.ones(len(examples), np.float32)
  return data.Rows(arrays, None)


def denominators(batch):
  return {"example": batch["weights"].sum()}


def loss(outputs, batch, dens):
  errors = (outputs["logits"][:, 0] - batch["targets"]) ** 2 * batch["weights"]
  count = batch["weights"].sum()
  return (errors.sum() / objectives.safe_denominator(dens["example"]),
          {"mse": (errors.sum(), count)})


def predict(outputs):
  return outputs["logits"][:, 0]


def score(config, examples, rows, predictions) -> dict:
  names = tuple(config.data.metrics.split(",")) if config.data.metrics else ("pearson", "spearman")
  return metrics.compute(names, predictions, classification.labels_of(examples))


OBJECTIVE = objectives.Objective(
    name="regression", family=("bert",),
    make_model=functools.partial(heads.BertForSequenceClassification, num_labels=1),
    model_inputs=classification.model_inputs, denominators=denominators, loss=loss)


def for_config(config) -> objectives.Objective:
  del config  # one output whatever the task
  return OBJECTIVE
