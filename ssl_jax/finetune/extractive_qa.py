"""Objective 'extractive_qa': SQuAD v1.1/v2.0 answer spans from start/end scores per token.

Rows (windows): `[CLS] question [SEP] passage window [SEP]`. A passage longer than the row is
cut into overlapping windows whose starts are `data.qa.doc_stride` tokens apart (at most a
window's length, as BERT's run_squad); every window is a row. Training labels
`start_positions`/`end_positions` are the answer's first and last token in the window, or 0
([CLS]) when the window does not hold the whole answer or the question has none (SQuAD 2.0);
featurize warns of answerable questions that no window holds whole (they train only 'no
answer'). Loss: mean of the start and end cross-entropies.

Prediction (per question, over all its windows): the best span (i, j), i <= j < i +
`max_answer_length`, both inside the passage, by start[i] + end[j]; the answer is the passage
text between the first character of token i and the last of token j. With
`data.qa.allow_no_answer` the question gets "" when the lowest [CLS] score start[0] + end[0]
over its windows (as transformers' run_qa) exceeds the best span's by more than
`null_score_threshold`.
Scores: official SQuAD exact match and F1 (`ssl_jax.finetune.metrics.squad_scores`).
"""
import unicodedata
from typing import NamedTuple

from absl import logging
import jax.numpy as jnp
import numpy as np

from ssl_jax import objectives
from ssl_jax.data import vocabularies
from ssl_jax.finetune import data
from ssl_jax.finetune import encoding
from ssl_jax.finetune import metrics
from ssl_jax.models import heads

FEATURES = {"start_positions": (False, np.int32), "end_positions": (False, np.int32),
            "weights": (False, np.float32)}


class Windows(NamedTuple):
  """Row metadata: the question each row belongs to, and per row position the passage
  character span [start, end) it covers (-1, -1 outside the passage)."""
  example: np.ndarray  # [N] int
  offsets: np.ndarray  # [N, L, 2] int


def _splits_alone(ch: str) -> bool:
  """BERT's pre-tokenizer makes punctuation and CJK ideographs words of their own."""
  cp = ord(ch)
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  if unicodedata.category(ch).startswith("P"):
    return True
  return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
          or 0x2A700 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def words_with_spans(text: str) -> list[tuple[str, int, int]]:
  """BERT's pre-tokenization of `text` (whitespace, punctuation, CJK) with character spans."""
  words, start = [], None
  for i, ch in enumerate(text):
    if ch.isspace() or _splits_alone(ch):
      if start is not None:
        words.append((text[start:i], start, i))
        start = None
      if not ch.isspace():
        words.append((ch, i, i + 1))
    elif start is None:
      start = i
  if start is not None:
    words.append((text[start:], start, len(text)))
  return words


def _piece_spans(vocab, ids, start, end):
  """Character spans of a word's pieces: exact when the pieces spell the word's length (lower-
  casing keeps it), otherwise every piece covers the whole word."""
  texts = [vocabularies.piece_text(vocab, i) for i in ids]
  lengths = [-1 if t is None else len(t) for t in texts]
  if -1 in lengths or sum(lengths) != end - start:
    return [(start, end)] * len(ids)
  edges = start + np.cumsum([0] + lengths)
  return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def passage_tokens(vocab, contexts):
  """Per passage: (token ids, [(char start, char end)] per token)."""
  words = [words_with_spans(c) for c in contexts]
  pieces = iter(vocabularies.encode_batch(vocab, [w for ws in words for w, _, _ in ws]))
  out = []
  for ws in words:
    ids, spans = [], []
    for (_, start, end), word_ids in zip(ws, pieces):
      ids += word_ids
      spans += _piece_spans(vocab, word_ids, start, end)
    out.append((ids, spans))
  return out


def featurize(config, vocab, examples, split=None) -> data.Rows:
  """The windows of SQuAD examples (see the module docstring); meta = `Windows`. Warns of
  answerable questions that no window holds whole, naming `split`'s file."""
  qa, length = config.data.qa, config.data.sequence_length
  special = encoding.specials(vocab)
  questions = [q[:qa.max_query_length]
               for q in vocabularies.encode_batch(vocab, [e.question for e in examples])]
  rows, owners, offsets = [], [], []
  answerable = unlabelled = 0
  for k, (example, question, (ids, spans)) in enumerate(
      zip(examples, questions, passage_tokens(vocab, [e.context for e in examples]))):
    budget = length - len(question) - 3
    answer = example.answers[0] if example.answers else None
    labelled = False
    window = 0
    while True:
      window_ids = ids[window:window + budget]
      first = len(question) + 2  # row position of the window's first passage token
      tokens = [special.cls] + question + [special.sep] + window_ids + [special.sep]
      types = [0] * first + [1] * (len(window_ids) + 1)
      row = encoding.pad_row(tokens, types, length, special.pad)
      row_offsets = np.full((length, 2), -1, np.int32)
      if window_ids:  # an empty passage still gives one (unanswerable) row
        row_offsets[first:first + len(window_ids)] = spans[window:window + budget]
      row["start_positions"], row["end_positions"] = _label(answer, row_offsets)
      labelled |= bool(row["start_positions"])
      row["weights"] = np.float32(1.0)
      rows.append(row)
      owners.append(k)
      offsets.append(row_offsets)
      if window + budget >= len(ids):
        break
      window += min(qa.doc_stride, budget)  # never skip passage tokens (BERT's run_squad)
    if answer is not None and answer.text.strip():
      answerable += 1
      unlabelled += not labelled
  if unlabelled:
    # Every window of such a question trains 'no answer' (SQuAD v1.1 has none), and none can
    # predict the answer whole.
    logging.warning(
        "%d of %d answerable questions of %s have no window that holds the whole answer, so "
        "they are labelled 'no answer' ([CLS]); make windows longer or overlap more: raise "
        "config.data.sequence_length=%d, lower config.data.qa.max_query_length=%d or "
        "config.data.qa.doc_stride=%d.", unlabelled, answerable,
        data.source(config, split) if split else "the examples", length, qa.max_query_length,
        qa.doc_stride)
  arrays = encoding.stack(rows)
  return data.Rows(arrays, Windows(np.asarray(owners), np.stack(offsets)))


def _label(answer, offsets) -> tuple[np.int32, np.int32]:
  """(first, last) row position of the answer's tokens, or (0, 0) if not wholly inside.

  Spaces around the answer text (SQuAD's files have some) are not part of the span.
  """
  if answer is None or not answer.text.strip():
    return np.int32(0), np.int32(0)
  start = answer.start + len(answer.text) - len(answer.text.lstrip())
  end = start + len(answer.text.strip())
  inside = offsets[:, 0] >= 0
  starts = np.nonzero(inside & (offsets[:, 0] <= start) & (offsets[:, 1] > start))[0]
  ends = np.nonzero(inside & (offsets[:, 0] < end) & (offsets[:, 1] >= end))[0]
  if not len(starts) or not len(ends) or ends[-1] < starts[0]:
    return np.int32(0), np.int32(0)
  return np.int32(starts[0]), np.int32(ends[-1])


def model_inputs(batch):
  return {name: batch[name] for name in data.TOKEN_FEATURES}


def denominators(batch):
  return {"example": batch["weights"].sum()}


def loss(outputs, batch, dens):
  start_sum, start_correct, count = objectives.token_cross_entropy(
      outputs["start_logits"], batch["start_positions"], batch["weights"])
  end_sum, end_correct, _ = objectives.token_cross_entropy(
      outputs["end_logits"], batch["end_positions"], batch["weights"])
  total = (start_sum + end_sum) / 2
  return (total / objectives.safe_denominator(dens["example"]),
          {"span_loss": (total, count), "start_accuracy": (start_correct, count),
           "end_accuracy": (end_correct, count)})


def predict(outputs):
  return jnp.stack([outputs["start_logits"], outputs["end_logits"]], -1)  # [B, L, 2]


def best_spans(config, examples, windows: Windows, logits) -> dict[str, str]:
  """Question id -> predicted answer text ("" = no answer); see the module docstring."""
  qa = config.data.qa
  length = logits.shape[1]
  i, j = np.arange(length)[:, None], np.arange(length)[None, :]
  band = (j >= i) & (j - i < qa.max_answer_length)
  best = {}  # example -> (span score, text)
  null = {}  # example -> lowest [CLS] score over its windows (as transformers' run_qa)
  for k, offsets, scores in zip(windows.example, windows.offsets, logits):
    start, end = scores[:, 0], scores[:, 1]
    null[k] = min(null.get(k, np.inf), start[0] + end[0])
    inside = offsets[:, 0] >= 0
    valid = band & inside[:, None] & inside[None, :]
    if not valid.any():
      continue
    pair = np.where(valid, start[:, None] + end[None, :], -np.inf)
    a, b = np.unravel_index(np.argmax(pair), pair.shape)
    if k not in best or pair[a, b] > best[k][0]:
      best[k] = (pair[a, b], examples[k].context[offsets[a, 0]:offsets[b, 1]])
  answers = {}
  for k, example in enumerate(examples):
    score, text = best.get(k, (-np.inf, ""))
    if qa.allow_no_answer and null.get(k, np.inf) - score > qa.null_score_threshold:
      text = ""
    answers[example.id] = text
  return answers


def score(config, examples, rows, predictions) -> dict:
  answers = best_spans(config, examples, rows.meta, predictions)
  return metrics.squad_scores({e.id: [a.text for a in e.answers] for e in examples}, answers)


OBJECTIVE = objectives.Objective(
    name="extractive_qa", family=("bert",), make_model=heads.BertForQuestionAnswering,
    model_inputs=model_inputs, denominators=denominators, loss=loss)


def for_config(config) -> objectives.Objective:
  del config  # the span head has two outputs whatever the task
  return OBJECTIVE
