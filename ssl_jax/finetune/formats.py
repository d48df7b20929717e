"""Readers of the downstream data formats, into plain Python examples (no tokenization).

    examples = formats.read_glue_tsv("sst2", "SST-2/dev.tsv")       # -> [TextExample]
    examples = formats.read_glue_tfds("rte", "validation")          # TFDS glue/rte -> [TextExample]
    sentences = formats.read_conllu("en_ewt-ud-dev.conllu")         # -> [TaggedSentence] (UPOS)
    questions = formats.read_squad("dev-v2.0.json")                 # -> [QAExample] (v1.1 and v2.0)

`GLUE` names, for each GLUE task, its text fields, its label names (empty for the STS-B regression)
and the metrics the benchmark reports. A label is the index into `label_names` (a float for
STS-B) or None where the file has none (GLUE test splits).
"""
import contextlib
import csv
import dataclasses
import itertools
import json
import os
import sys
from typing import Optional, Sequence, Union


@dataclasses.dataclass(frozen=True)
class TextExample:
  """One sentence (`text_b` None) or sentence pair with its label (see the module docstring)."""
  text_a: str
  text_b: Optional[str]
  label: Union[int, float, None]
  id: str


@dataclasses.dataclass(frozen=True)
class TaggedSentence:
  """Words and one tag per word (CoNLL-U: the UPOS column). `text` is the sentence as written:
  CoNLL-U's `# text =` comment, else the surface forms (a multiword token's, not its words') joined
  as their `SpaceAfter=No` marks say; '' where unknown."""
  tokens: tuple[str, ...]
  tags: tuple[str, ...]
  id: str
  text: str = ""


@dataclasses.dataclass(frozen=True)
class Answer:
  text: str
  start: int  # character offset into the context


@dataclasses.dataclass(frozen=True)
class QAExample:
  """A SQuAD question; `answers` is empty exactly when the question is unanswerable (v2.0)."""
  id: str
  question: str
  context: str
  answers: tuple[Answer, ...]

  @property
  def is_impossible(self) -> bool:
    return not self.answers


@dataclasses.dataclass(frozen=True)
class GlueSpec:
  """How a GLUE task's files name things.

  `tsv_columns` gives, for text_a, text_b and the label, the header names to look for, first match
  wins: the GLUE distribution's names first, then those of Hugging Face `datasets` exports. An int
  is a column index, for headerless files (CoLA train/dev); header=None reads the first row as a
  header when it names a text column.
  """
  tfds_fields: tuple[str, ...]  # text_a[, text_b] feature names in TFDS glue/<task>
  label_names: tuple[str, ...]  # () = regression
  metrics: tuple[str, ...]      # ssl_jax.finetune.metrics names, reported
  tsv_columns: tuple[tuple[Union[str, int], ...], ...]
  header: Optional[bool] = True
  score: tuple[str, ...] = ()   # the metrics GLUE's task score averages; () = all of `metrics`


_PAIR = (("sentence1",), ("sentence2",), ("label",))
GLUE = {
    "cola": GlueSpec(("sentence",), ("unacceptable", "acceptable"), ("matthews_corr", "accuracy"),
                     ((3, "sentence"), (), (1, "label")), header=None,
                     score=("matthews_corr",)),  # accuracy is reported, not scored
    "sst2": GlueSpec(("sentence",), ("negative", "positive"), ("accuracy",),
                     (("sentence",), (), ("label",))),
    "mrpc": GlueSpec(("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy"),
                     (("#1 String", "sentence1"), ("#2 String", "sentence2"), ("Quality", "label"))),
    "qqp": GlueSpec(("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy"),
                    (("question1",), ("question2",), ("is_duplicate", "label"))),
    "stsb": GlueSpec(("sentence1", "sentence2"), (), ("pearson", "spearman"),
                     (("sentence1",), ("sentence2",), ("score", "label"))),
    "mnli": GlueSpec(("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
                     ("accuracy",),
                     (("sentence1", "premise"), ("sentence2", "hypothesis"), ("gold_label", "label"))),
    "qnli": GlueSpec(("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",),
                     (("question",), ("sentence",), ("label",))),
    "rte": GlueSpec(("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",),
                    _PAIR),
}


def glue_spec(task: str) -> GlueSpec:
  if task not in GLUE:
    raise ValueError(f"GLUE task {task!r} is unknown; use one of {', '.join(GLUE)}.")
  return GLUE[task]


def label_names(task: str, labels: str) -> tuple[str, ...]:
  """The label names label ids index: config.data.labels (comma-separated) when it is set, else
  GLUE task `task`'s (() for the STS-B regression)."""
  return tuple(labels.split(",")) if labels else glue_spec(task).label_names


def _require_file(path: str, what: str) -> None:
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{what} file {path!r} does not exist; set config.data.train_file / eval_file (or the "
        "argument) to an existing file.")


@contextlib.contextmanager
def open_text(path: str, what: str, newline=None):
  """`path` opened as UTF-8 text (utf-8-sig: GLUE's MRPC files start with a byte-order mark);
  a file that is not UTF-8 (a binary or a Latin-1 file) raises a ValueError naming it."""
  with open(path, encoding="utf-8-sig", newline=newline) as f:
    try:
      yield f
    except UnicodeDecodeError as e:
      raise ValueError(f"{what} file {path!r} is not UTF-8 text (byte {e.start}: {e.reason}); "
                       "convert it to UTF-8, or name the right file.") from None


def parse_label(value: str, label_names: Sequence[str], where: str) -> Union[int, float]:
  """A label cell -> its index in `label_names` (by name or as an integer), or a float when
  `label_names` is empty (regression)."""
  value = value.strip()
  try:
    if not label_names:
      return float(value)
    if value in label_names:
      return label_names.index(value)
    index = int(value)
    if 0 <= index < len(label_names):
      return index
  except ValueError:
    pass
  expected = "a number" if not label_names else (
      f"one of {list(label_names)} or an index 0..{len(label_names) - 1}")
  spelt = ("" if not label_names else " If the file spells the labels otherwise, list its "
           f"spellings in the order of {list(label_names)}: --config.data.labels=A,B,...")
  raise ValueError(f"{where}: label {value!r} is not {expected}; check the file's label column "
                   f"and the task (config.data.task).{spelt}")


def read_tsv(path: str, columns: Sequence[Sequence[Union[str, int]]],
             label_names: Sequence[str], *, header: bool = True,
             glue: bool = False, task: Optional[str] = None) -> list[TextExample]:
  """Reads a tab-separated file of sentences (pairs) and labels.

  Args:
    path: the file. Quotes are literal (GLUE files contain unbalanced quotes), as in BERT's
      `run_classifier.py`.
    columns: for text_a, text_b, label: candidate column names (or indices); the first present
      wins. text_b `()` = single sentences; a label column absent from the file gives label None.
    label_names: see `parse_label`.
    header: whether the first row names the columns; None: it does when it holds one of text_a's
      candidate names.
    glue: a GLUE file, whose negative label cells are hidden labels (a Hugging Face `datasets`
      export of a test split: -1, STS-B's -1.0; gold scores are >= 0), read as None, as
      `read_glue_tfds` reads them.
    task: the GLUE task whose columns these are (config.data.task), named when one is missing.
  Returns:
    One TextExample per row, id = the 0-based data row number.
  """
  _require_file(path, "TSV")
  csv.field_size_limit(sys.maxsize)
  with open_text(path, "TSV", newline="") as f:
    rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  if not any(row and row != [""] for row in rows):
    raise ValueError(f"{path} is empty: a TSV of examples needs a row per example (and, in the "
                     "GLUE format, a header row naming the columns).")
  if header is None:
    header = bool(rows) and any(c in rows[0] for c in columns[0] if isinstance(c, str))
  names = rows[0] if header and rows else []
  rows = rows[1:] if header else rows

  def find(candidates, what, required):
    for c in candidates:
      if isinstance(c, int):
        if not header:
          return c
      elif c in names:
        return names.index(c)
    if required:
      fix = ("Use a GLUE-format file for this task." if task is None else
             f"config.data.task={task!r} reads GLUE {task}'s columns: if the file is another "
             f"task's, set --config.data.task to it ({', '.join(GLUE)}).")
      raise ValueError(f"{path}: no {what} column; expected one named {' or '.join(map(str, candidates))} "
                       f"(the header has {names}). {fix}")
    return None

  text_a = find(columns[0], "text", True)
  text_b = find(columns[1], "second text", bool(columns[1]))
  label = find(columns[2], "label", False)
  examples = []
  for i, row in enumerate(rows):
    if not row or row == [""]:
      continue
    where = f"{path} line {i + 1 + header}"
    needed = max(c for c in (text_a, text_b, label) if c is not None)
    if len(row) <= needed:
      raise ValueError(f"{where} has {len(row)} tab-separated fields, expected at least {needed + 1}; "
                       "fields must be separated by tabs and contain none.")
    cell = None if label is None else row[label].strip()
    hidden = cell is None or cell == "" or (glue and _is_negative_number(cell))
    examples.append(TextExample(
        text_a=row[text_a].strip(), text_b=None if text_b is None else row[text_b].strip(),
        label=None if hidden else parse_label(cell, label_names, where),
        id=str(len(examples))))
  return examples


def _is_negative_number(cell: str) -> bool:
  try:
    return float(cell) < 0
  except ValueError:
    return False


def read_glue_tsv(task: str, path: str,
                  label_names: Optional[Sequence[str]] = None) -> list[TextExample]:
  """A GLUE task's TSV (the GLUE distribution, or a Hugging Face `datasets` export); its labels
  are the task's, or `label_names` (config.data.labels)."""
  spec = glue_spec(task)
  return read_tsv(path, spec.tsv_columns, spec.label_names if label_names is None else label_names,
                  header=spec.header, glue=True, task=task)


def read_glue_tfds(task: str, split: str, data_dir: Optional[str] = None) -> list[TextExample]:
  """TFDS `glue/<task>` split as TextExamples (the test splits' labels, -1 or STS-B's -1.0, become
  None)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  spec = glue_spec(task)
  ds = tfds.load(f"glue/{task}", split=split, data_dir=data_dir, shuffle_files=False)
  examples = []
  for i, ex in enumerate(tfds.as_numpy(ds)):
    texts = [ex[f].decode("utf-8") for f in spec.tfds_fields]
    label = ex["label"].item()
    if label < 0:  # a hidden test label (regression scores are >= 0: STS-B's are 0 to 5)
      label = None
    elif spec.label_names:
      label = int(label)
    examples.append(TextExample(texts[0], texts[1] if len(texts) > 1 else None, label,
                                str(ex["idx"].item()) if "idx" in ex else str(i)))
  return examples


TAG_COLUMNS = ("upos", "xpos")


def read_conllu(path: str, column: str = "upos") -> list[TaggedSentence]:
  """Sentences of a CoNLL-U file with the UPOS (or `column='xpos'`) tag of each word.

  Multiword-token lines (`3-4`) and empty nodes (`5.1`) are skipped: the words are the syntactic
  words, as UD evaluates tagging. A multiword token's form is part of the sentence's `text`.
  """
  _require_file(path, "CoNLL-U")
  index = 3 + TAG_COLUMNS.index(column)
  sentences = []
  tokens, tags, surface, comments, covered = [], [], [], {}, 0
  with open_text(path, "CoNLL-U") as f:
    for number, line in enumerate(itertools.chain(f, [""]), 1):   # a blank line ends the last
      line = line.rstrip("\n")
      if line.startswith("#"):
        key, equals, value = line[1:].partition("=")
        if equals:   # '# sent_id = s1', '# text = I can't go.'
          comments[key.strip()] = value.strip()
        continue
      if not line.strip():
        if tokens:
          sentences.append(TaggedSentence(
              tuple(tokens), tuple(tags), comments.get("sent_id") or str(len(sentences)),
              comments.get("text") or "".join(surface).strip()))
        tokens, tags, surface, comments, covered = [], [], [], {}, 0
        continue
      fields = line.split("\t")
      first, _, last = fields[0].partition("-")
      if len(fields) != 10 or not (first + last).replace(".", "").isdigit():
        raise ValueError(f"{path} line {number}: a CoNLL-U word line has 10 tab-separated fields "
                         f"and a numeric id, this one {len(fields)} fields and id {fields[0]!r}; "
                         "pass a CoNLL-U file.")
      if "." in first:   # an empty node
        continue
      space = "" if "SpaceAfter=No" in fields[9].split("|") else " "
      if last:   # a multiword token: its form is the text of words first..last
        surface.append(fields[1] + space)
        covered = int(last)
        continue
      if int(first) > covered:
        surface.append(fields[1] + space)
      tokens.append(fields[1])
      tags.append(fields[index])
  if sentences and all(t == "_" for s in sentences for t in s.tags):
    raise ValueError(f"{path} has no {column.upper()} tags (the column is all '_'); this treebank "
                     f"does not annotate it, use another --config.data.tag_column.")
  return sentences


def read_squad(path: str) -> list[QAExample]:
  """Questions of a SQuAD v1.1 or v2.0 JSON file, in file order."""
  _require_file(path, "SQuAD JSON")
  layout = ("pass a SQuAD v1.1/v2.0 JSON file: {'data': [{'paragraphs': [{'context': ..., 'qas': "
            "[{'id', 'question', 'answers': [{'text', 'answer_start'}], 'is_impossible' (v2.0)}]}]}"
            "]} (a Hugging Face `datasets` export, one flat record per question, is not one)")
  with open_text(path, "SQuAD JSON") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not one JSON document ({e}); {layout}.") from None
  if not isinstance(data, dict) or "data" not in data:
    raise ValueError(f"{path} has no 'data' list; {layout}.")
  examples, seen = [], set()
  try:
    for article in data["data"]:
      for paragraph in article["paragraphs"]:
        context = paragraph["context"]
        for qa in paragraph["qas"]:
          answers = () if qa.get("is_impossible", False) else tuple(
              Answer(a["text"], int(a["answer_start"])) for a in qa["answers"])
          example = QAExample(qa["id"], qa["question"], context, answers)
          _check_question(path, example, seen)
          examples.append(example)
  except (KeyError, TypeError) as e:
    raise ValueError(f"{path}: question {len(examples) + 1} lacks the field {e}; {layout}.") \
        from None
  return examples


def _check_question(path: str, example: QAExample, seen: set) -> None:
  """Raises for a repeated question id (scores are keyed by id: one question's gold replaced
  another's) or an answer whose answer_start does not point at its text in the context (its
  span would be another, or none)."""
  if example.id in seen:
    raise ValueError(f"{path}: question id {example.id!r} occurs twice; give each question its "
                     "own id (the scores are keyed by it).")
  seen.add(example.id)
  for answer in example.answers:
    found = example.context[answer.start:answer.start + len(answer.text)]
    if found != answer.text:
      raise ValueError(
          f"{path}: question {example.id!r} has answer {answer.text!r} at answer_start "
          f"{answer.start}, where the context reads {found!r}; answer_start is the answer's "
          "character offset in the context (as in the official SQuAD files).")
