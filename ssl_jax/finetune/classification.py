"""Objective 'classification': one sentence or a sentence pair -> one of the task's labels.

Rows: `[CLS] A [SEP] (B [SEP])` token rows plus `labels` (int32) and `weights` (float32, 1 per
real row). Loss: cross-entropy per example. Scores: the task's metrics (GLUE: accuracy, F1,
Matthews correlation) on the whole eval split.
"""
import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from ssl_jax import objectives
from ssl_jax.data import vocabularies
from ssl_jax.finetune import data
from ssl_jax.finetune import encoding
from ssl_jax.finetune import formats
from ssl_jax.finetune import metrics
from ssl_jax.models import heads

FEATURES = {"labels": (False, np.int32), "weights": (False, np.float32)}


def label_names(config) -> tuple[str, ...]:
  names = formats.label_names(config.data.task, config.data.labels)
  if not names:
    raise ValueError(f"config.data.task={config.data.task!r} is a regression task; use "
                     "config.objective='regression' (configs/finetune/stsb.py).")
  return names


def metric_names(config) -> tuple[str, ...]:
  if config.data.metrics:
    return tuple(config.data.metrics.split(","))
  if config.data.task in formats.GLUE:
    return formats.GLUE[config.data.task].metrics
  return ("accuracy",)


def token_rows(config, vocab, examples) -> dict:
  """The [CLS] A [SEP] B [SEP] rows of TextExamples."""
  special = encoding.specials(vocab)
  ids_a = vocabularies.encode_batch(vocab, [e.text_a for e in examples])
  pairs = examples[0].text_b is not None
  ids_b = (vocabularies.encode_batch(vocab, [e.text_b or "" for e in examples]) if pairs
           else [None] * len(ids_a))
  return encoding.stack([encoding.pair_row(a, b, config.data.sequence_length, special)
                         for a, b in zip(ids_a, ids_b)])


def labels_of(examples) -> list:
  missing = [e.id for e in examples if e.label is None]
  if missing:
    raise ValueError(f"{len(missing)} examples have no label (first: row {missing[0]}); "
                     "fine-tuning and scoring need labelled files (a GLUE test split has none).")
  return [e.label for e in examples]


def featurize(config, vocab, examples, split=None) -> data.Rows:
  del split  # nothing to warn of: a pair longer than the row is cut as BERT cuts it
  arrays = token_rows(config, vocab, examples)
  arrays["labels"] = np.asarray(labels_of(examples), np.int32)
  arrays["weights"] = np.ones(len(examples), np.float32)
  return data.Rows(arrays, None)


def model_inputs(batch):
  return {name: batch[name] for name in data.TOKEN_FEATURES}


def denominators(batch):
  return {"example": batch["weights"].sum()}


def loss(outputs, batch, dens):
  loss_sum, correct, count = objectives.token_cross_entropy(
      outputs["logits"], batch["labels"], batch["weights"])
  return (loss_sum / objectives.safe_denominator(dens["example"]),
          {"classification_loss": (loss_sum, count), "accuracy": (correct, count)})


def predict(outputs):
  return jnp.argmax(outputs["logits"], -1)


def score(config, examples, rows, predictions) -> dict:
  return metrics.compute(metric_names(config), predictions, labels_of(examples))


OBJECTIVE = objectives.Objective(
    name="classification", family=("bert",),
    make_model=functools.partial(heads.BertForSequenceClassification, num_labels=2),
    model_inputs=model_inputs, denominators=denominators, loss=loss)


def for_config(config) -> objectives.Objective:
  """OBJECTIVE with a head of len(label_names(config)) outputs."""
  return dataclasses.replace(OBJECTIVE, make_model=functools.partial(
      heads.BertForSequenceClassification, num_labels=len(label_names(config))))
