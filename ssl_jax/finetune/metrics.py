"""Downstream metrics as the benchmarks define them.

GLUE: `accuracy`, `f1` (binary, positive class 1: MRPC/QQP), `matthews_corr` (CoLA),
`pearson` / `spearman` (STS-B). SQuAD: `squad_scores` follows the official v2.0 evaluation
script (on a v1.1 file it differs from the v1.1 script only where a gold answer normalises to
nothing, e.g. "the": v2.0 drops it, and a question left with none counts as unanswerable):
answers normalised by lower-casing and removing punctuation, the articles a/an/the and extra
whitespace; exact match and token F1 take the best over the gold answers; an unanswerable
question's only gold answer is "". All scores here
are fractions in [0, 1] (or [-1, 1] for correlations), except SQuAD's, which are percentages
as the official script prints them.
"""
import collections
import re
import string
from typing import Mapping, Sequence

from absl import logging
import numpy as np
import scipy.stats


def accuracy(predictions, labels) -> float:
  return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1(predictions, labels) -> float:
  """Binary F1 of class 1 (0 when there are neither predicted nor true positives)."""
  p, y = np.asarray(predictions) == 1, np.asarray(labels) == 1
  tp = float(np.sum(p & y))
  return 2 * tp / (np.sum(p) + np.sum(y)) if tp else 0.0


def matthews_corr(predictions, labels) -> float:
  """Matthews correlation coefficient (multiclass form; 0 when it is undefined)."""
  p, y = np.asarray(predictions), np.asarray(labels)
  classes = np.union1d(p, y)
  confusion = np.array([[np.sum((y == a) & (p == b)) for b in classes] for a in classes], float)
  t, q = confusion.sum(1), confusion.sum(0)  # true and predicted counts per class
  n, c = confusion.sum(), np.trace(confusion)
  denominator = np.sqrt((n * n - q @ q) * (n * n - t @ t))
  return float((c * n - t @ q) / denominator) if denominator else 0.0


def _correlation(name, function, predictions, labels) -> float:
  """`function`'s coefficient; 0 (with a warning) where it is undefined, as for MCC: fewer than
  two examples, or constant predictions or labels (a collapsed regressor; scipy gives NaN, which
  made an eval-suite's average NaN)."""
  x, y = np.asarray(predictions, float), np.asarray(labels, float)
  if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
    constant = "too few examples" if len(x) < 2 else (
        f"every prediction is {x[0]:g}" if np.ptp(x) == 0 else f"every label is {y[0]:g}")
    logging.warning("%s correlation is undefined (%s, %d examples); scored 0.", name, constant,
                    len(x))
    return 0.0
  return float(function(x, y)[0])


def pearson(predictions, labels) -> float:
  return _correlation("Pearson", scipy.stats.pearsonr, predictions, labels)


def spearman(predictions, labels) -> float:
  return _correlation("Spearman", scipy.stats.spearmanr, predictions, labels)


CLASSIFICATION = {"accuracy": accuracy, "f1": f1, "matthews_corr": matthews_corr,
                  "pearson": pearson, "spearman": spearman}


def compute(names: Sequence[str], predictions, labels) -> dict[str, float]:
  """{name: metric(predictions, labels)} for metric names of `CLASSIFICATION`."""
  unknown = [n for n in names if n not in CLASSIFICATION]
  if unknown:
    raise ValueError(f"metrics {unknown} are unknown; use names from {sorted(CLASSIFICATION)}.")
  return {n: CLASSIFICATION[n](predictions, labels) for n in names}


# ------------------------------------------------------------------------------ SQuAD
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
  """Lower-case, drop punctuation, drop articles, squeeze whitespace (official SQuAD)."""
  s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", s).split())


def _tokens(s: str) -> list[str]:
  return normalize_answer(s).split() if s else []


def exact_match(gold: str, prediction: str) -> int:
  return int(normalize_answer(gold) == normalize_answer(prediction))


def token_f1(gold: str, prediction: str) -> float:
  """Bag-of-tokens F1 of the normalised answers; 1 if both are empty, 0 if only one is."""
  gold_tokens, pred_tokens = _tokens(gold), _tokens(prediction)
  if not gold_tokens or not pred_tokens:
    return float(gold_tokens == pred_tokens)
  same = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
  if not same:
    return 0.0
  precision, recall = same / len(pred_tokens), same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_scores(gold_answers: Mapping[str, Sequence[str]],
                 predictions: Mapping[str, str]) -> dict[str, float]:
  """Official SQuAD scores.

  Args:
    gold_answers: question id -> gold answer texts ([] for an unanswerable question).
    predictions: question id -> predicted text ("" = no answer); a missing id scores 0.
  Returns:
    {'exact', 'f1', 'total'} plus 'HasAns_*' / 'NoAns_*' for the answerable and unanswerable
    subsets that are non-empty; scores in percent.
  """
  exact, f1s, has_answer = {}, {}, {}
  for qid, answers in gold_answers.items():
    golds = [a for a in answers if normalize_answer(a)] or [""]
    has_answer[qid] = golds != [""]
    if qid not in predictions:
      exact[qid] = f1s[qid] = 0.0
      continue
    exact[qid] = max(exact_match(g, predictions[qid]) for g in golds)
    f1s[qid] = max(token_f1(g, predictions[qid]) for g in golds)

  def summary(ids, prefix=""):
    n = len(ids)
    return {f"{prefix}exact": 100.0 * sum(exact[i] for i in ids) / n,
            f"{prefix}f1": 100.0 * sum(f1s[i] for i in ids) / n, f"{prefix}total": n}

  scores = summary(list(gold_answers))
  for prefix, flag in (("HasAns_", True), ("NoAns_", False)):
    ids = [i for i in gold_answers if has_answer[i] == flag]
    if ids:
      scores.update(summary(ids, prefix))
  return scores
