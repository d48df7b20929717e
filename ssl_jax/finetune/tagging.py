"""Objective 'tagging': one tag per word (CoNLL-U UPOS, or XPOS with data.tag_column='xpos').

Rows: `[CLS] word pieces [SEP]`; `labels` [L] hold each word's tag at its first piece, with
`label_weights` 1 there and 0 elsewhere (continuation pieces, [CLS], [SEP], padding), as BERT
tags. A sentence longer than the row keeps every word's first piece (its label) while the row
has room: from the word that would crowd later words out on, words lose continuation pieces.
Words left out even so are warned of and count as wrong when scored, so accuracy is over every
word of the eval file. Scores: `accuracy` (per word).
"""
import dataclasses
import functools

from absl import logging
import jax.numpy as jnp
import numpy as np

from ssl_jax import objectives
from ssl_jax.data import vocabularies
from ssl_jax.finetune import data
from ssl_jax.finetune import encoding
from ssl_jax.finetune import formats
from ssl_jax.models import heads

# Universal Dependencies v2 UPOS tags.
UPOS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON",
        "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X")
FEATURES = {"labels": (True, np.int32), "label_weights": (True, np.float32)}


def tag_names(config) -> tuple[str, ...]:
  """config.data.labels; else UPOS, or for XPOS (treebank-specific) the tags of the train file."""
  d = config.data
  if d.labels:
    return tuple(d.labels.split(","))
  if d.tag_column == "upos":
    return UPOS
  return _file_tags(d.train_file, d.tag_column)


@functools.lru_cache(maxsize=4)
def _file_tags(path: str, column: str) -> tuple[str, ...]:
  return tuple(sorted({t for s in formats.read_conllu(path, column) for t in s.tags}))


def check_tags(config, sentences, split: str | None = None) -> None:
  """Raises for a tag of `sentences` (of `split`'s file, if given) outside `tag_names(config)`
  (needs no vocabulary: the eval suite checks every task's files before the first one trains)."""
  unknown = sorted({t for s in sentences for t in s.tags} - set(tag_names(config)))
  if unknown:
    setting = "train_file" if split == "train" else "eval_file"
    where = f" of config.data.{setting}={config.data[setting]!r}" if split else ""
    raise ValueError(f"tags {unknown[:5]}{where} are not in config.data.labels (when it is '': "
                     "UPOS, or for XPOS the train file's tags); list every tag of the files in "
                     "--config.data.labels=TAG,TAG,...")


def featurize(config, vocab, sentences, split=None) -> data.Rows:
  """Rows of TaggedSentences; meta = per sentence, the row positions of its words' first pieces
  (of the words that fit). Warns of words that do not fit, naming `split`'s file."""
  special = encoding.specials(vocab)
  check_tags(config, sentences)
  index = {t: i for i, t in enumerate(tag_names(config))}
  pieces = vocabularies.encode_batch(vocab, [w for s in sentences for w in s.tokens])
  length = config.data.sequence_length
  rows, firsts, k, left_out = [], [], 0, 0
  for s in sentences:
    tokens, labels, first = [special.cls], [0], []
    words = pieces[k:k + len(s.tokens)]
    for n, (tag, word_pieces) in enumerate(zip(s.tags, words)):
      word_pieces = word_pieces or [vocab.unk_id]  # a word of only dropped characters
      free = length - 1 - len(tokens)  # room before [SEP]
      if free < 1:
        break
      # A word gives up continuation pieces rather than push later words' first pieces (their
      # labels) out of the row: one long URL would otherwise take the rest of its sentence along.
      word_pieces = word_pieces[:max(1, free - (len(words) - n - 1))]
      first.append(len(tokens))
      labels += [index[tag]] + [0] * (len(word_pieces) - 1)
      tokens += word_pieces
    k += len(s.tokens)
    left_out += len(s.tokens) - len(first)
    tokens.append(special.sep)
    row = encoding.pad_row(tokens, [0] * len(tokens), length, special.pad)
    row["labels"] = np.zeros(length, np.int32)
    row["labels"][:len(labels)] = labels
    row["label_weights"] = np.zeros(length, np.float32)
    row["label_weights"][first] = 1.0
    rows.append(row)
    firsts.append(first)
  if left_out:
    logging.warning("%d of %d words of %s do not fit config.data.sequence_length=%d (their "
                    "tags are scored as wrong); raise config.data.sequence_length.", left_out, k,
                    data.source(config, split) if split else "the sentences", length)
  return data.Rows(encoding.stack(rows), firsts)


def model_inputs(batch):
  return {name: batch[name] for name in data.TOKEN_FEATURES}


def denominators(batch):
  return {"word": batch["label_weights"].sum()}


def loss(outputs, batch, dens):
  loss_sum, correct, count = objectives.token_cross_entropy(
      outputs["logits"], batch["labels"], batch["label_weights"])
  return (loss_sum / objectives.safe_denominator(dens["word"]),
          {"tagging_loss": (loss_sum, count), "accuracy": (correct, count)})


def predict(outputs):
  return jnp.argmax(outputs["logits"], -1)


def score(config, sentences, rows, predictions) -> dict:
  index = {t: i for i, t in enumerate(tag_names(config))}
  correct = total = 0
  for s, first, predicted in zip(sentences, rows.meta, predictions):
    gold = [index[t] for t in s.tags]
    correct += int(np.sum(predicted[first] == gold[:len(first)]))
    total += len(gold)  # words cut by the row length count as wrong
  return {"accuracy": correct / total}


OBJECTIVE = objectives.Objective(
    name="tagging", family=("bert",),
    make_model=functools.partial(heads.BertForTokenClassification, num_labels=len(UPOS)),
    model_inputs=model_inputs, denominators=denominators, loss=loss)


def for_config(config) -> objectives.Objective:
  return dataclasses.replace(OBJECTIVE, make_model=functools.partial(
      heads.BertForTokenClassification, num_labels=len(tag_names(config))))
