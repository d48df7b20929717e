"""Run probes over every checkpoint of a workdir and write `probes.jsonl` (`ssl-jax probe`).

    rows = runner.probe_workdir("/tmp/bert", ["pos_accuracy", "linear_probe"])
    # <workdir>/probes.jsonl: {"step": 1, "probe": "pos_accuracy", "name": "accuracy/NOUN",
    #                          "value": 0.0}, ... one line per value, steps ascending

The output is a function of the checkpoints and the arguments only (probe sentences from a fixed
seed, no dropout, closed-form probes), so two runs on the same workdir write the same file. The
file is rewritten after each checkpoint is probed, so a run that stops part-way (killed, out of
memory) leaves the rows of the checkpoints it finished.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from absl import logging
import jax
import tensorflow as tf

from ssl_jax import checkpointing
from ssl_jax import metrics
from ssl_jax.probes import attention
from ssl_jax.probes import cka
from ssl_jax.probes import data
from ssl_jax.probes import linear_probe
from ssl_jax.probes import similarity
from ssl_jax.probes import token_accuracy
from ssl_jax.probes.subject import Subject

PROBES = {cls.name: cls for cls in (
    token_accuracy.PosAccuracy, token_accuracy.MaskingKindLoss, token_accuracy.SpanLengthLoss,
    linear_probe.LinearProbe, similarity.ContextualSimilarity, attention.AttentionEntropy,
    cka.RepresentationCKA)}
OUTPUT_FILE = "probes.jsonl"


def applicable(objective: str) -> list[str]:
  """Names of the probes that apply to `objective`, in PROBES order."""
  return [name for name, cls in PROBES.items() if objective in cls.objectives]


def check_names(names: Sequence[str], objective: str) -> None:
  """Raises ValueError for an unknown probe or one that does not apply to `objective`."""
  if not names:
    raise ValueError(f"--probes names no probe; name some of {', '.join(applicable(objective))} "
                     "(or leave --probes out for all that apply).")
  duplicates = sorted({n for n in names if list(names).count(n) > 1})
  if duplicates:
    raise ValueError(f"--probes names {duplicates} more than once; name each probe once.")
  for name in names:
    if name not in PROBES:
      raise ValueError(f"--probes names {name!r}, which is not a probe; use some of "
                       f"{', '.join(PROBES)}.")
    cls = PROBES[name]
    if objective not in cls.objectives:
      raise ValueError(
          f"probe {name!r} does not apply to objective {objective!r}: it {cls.needs}. Probes "
          f"for {objective!r}: {', '.join(applicable(objective))}.")


def make_evaluators(subject: Subject, names: Sequence[str] | None, text: data.ProbeText,
                    reference=None) -> list:
  """The evaluators `names` (default: every probe that applies), each with `run(state)`.

  `reference` (params) is what the CKA probe compares with; see cka.py.
  """
  names = applicable(subject.name) if names is None else list(names)
  check_names(names, subject.name)
  return [PROBES[n](subject, text, reference=reference) if n == cka.RepresentationCKA.name
          else PROBES[n](subject, text) for n in names]


def probe_sentences(conllu: Sequence[str] = (), num_sentences: int = 256) -> list:
  """CoNLL-U sentences when files are given, else default-corpus sentences (data.PROBE_SEED)."""
  if conllu:
    return data.conllu_sentences(conllu, num_sentences)
  return data.corpus_sentences(num_sentences)


def probe_workdir(workdir: str, names: Sequence[str] | None = None, *,
                  conllu: Sequence[str] = (), num_sentences: int = 256,
                  steps: Sequence[int] | None = None, out: str | None = None) -> list[dict]:
  """Runs the probes `names` (default: all that apply) on checkpoints `steps` (default: all)
  of `workdir`; writes the rows to `out` (default `<workdir>/probes.jsonl`), replacing that file,
  and returns them. The file is rewritten (atomically) after each checkpoint with the rows of
  every checkpoint probed so far: a run that stops part-way leaves those (one that stops before
  the first checkpoint is probed leaves the file as it was).

  Raises:
    ValueError / FileNotFoundError naming the flag: an unknown or inapplicable probe, a
      workdir without config.json or checkpoints, a step that has no checkpoint, an `out` that
      is a directory.
  """
  out = out or os.path.join(workdir, OUTPUT_FILE)
  if tf.io.gfile.isdir(out):
    raise ValueError(f"--out={out!r} is a directory; name the file to write, e.g. "
                     f"--out={os.path.join(out, OUTPUT_FILE)}.")
  _check_replaceable(out)
  saved = checkpointing.workdir_config(workdir)   # read once: on gs:// each read is a round trip
  checkpointing.refuse_fine_tuning_run(
      workdir, saved, "probe", "its checkpoints trace a task's training from a trained model, "
      "not learning from scratch; probe the run it started from.")
  subject = Subject(checkpointing.as_run_config(saved, workdir), workdir)
  try:
    if names is not None:
      check_names(names, subject.name)   # before any checkpoint is read
    available = subject.steps()
    steps = available if steps is None else sorted(set(steps))  # each step probed once
    if not steps:   # it would replace the results with nothing
      raise ValueError("steps=[] names no checkpoint step; give steps, or None for every checkpoint.")
    missing = sorted(set(steps) - set(available))
    if missing:
      raise ValueError(f"--steps names {missing}, which have no checkpoint in {workdir!r}; "
                       f"the checkpoints are at steps {available}.")
    data_cfg = subject.config.data
    if not conllu and (data_cfg.source != "default_corpus" or data_cfg.get("mixture")):
      logging.warning(
          "%s trained on %s, not the default corpus; the probes read default-corpus sentences. "
          "Pass --conllu with text of the run's domain (e.g. UD English EWT for English).",
          workdir, f"mixture {data_cfg.mixture!r}" if data_cfg.get("mixture") else
          f"data.source={data_cfg.source!r}")
    text = data.fit(data.tokenize(probe_sentences(conllu, num_sentences), subject.vocab),
                    subject.sentence_tokens)   # warns once of what the model's positions cut
    writer = jax.process_index() == 0   # every process of a multi-process job probes the same
    if writer and os.path.dirname(out):
      tf.io.gfile.makedirs(os.path.dirname(out))   # now, not after hours of probing
    reference = None
    if names is None or cka.RepresentationCKA.name in names:
      reference = subject.restore(available[-1])   # CKA against the run's last checkpoint
    evaluators = make_evaluators(subject, names, text, reference)
    rows = []
    for count, step in enumerate(steps, 1):
      params = subject.restore(step)
      for evaluator in evaluators:
        rows += [{"step": step, "probe": evaluator.name, "name": name, "value": value}
                 for name, value in evaluator.run(params)]
      del params   # before the next restore: one checkpoint in memory, not two
      if writer:   # each checkpoint's rows are kept as soon as they exist: no crash loses them
        write_rows(rows, out)
      logging.info("probed step %d (%d of %d) of %s", step, count, len(steps), workdir)
  finally:
    subject.close()
  if writer:
    logging.info("wrote %d rows (%d checkpoints) to %s", len(rows), len(steps), out)
  return rows


def _check_replaceable(out: str) -> None:
  """Raises if `out` exists and is not an earlier probes file (empty, or JSON rows with a
  'probe'): the run's config.json or metrics.jsonl, or the --conllu input, would be replaced."""
  if not tf.io.gfile.exists(out):
    return
  with tf.io.gfile.GFile(out, "rb") as f:
    first = f.readline()
  try:
    row = json.loads(first) if first.strip() else {"probe": None}
  except ValueError:   # also not UTF-8
    row = None
  ours = isinstance(row, dict) and "probe" in row
  if not ours:
    raise ValueError(f"--out={out!r} exists and is not a probes file (its first line is no probe "
                     "row): the probes would replace it. Name a new file, e.g. "
                     f"--out={os.path.join(os.path.dirname(out), OUTPUT_FILE)}.")


def write_rows(rows: Sequence[dict], path: str) -> None:
  """Writes rows as JSON lines, atomically on local disks (a reader never sees half a file)."""
  metrics.write_atomically(path, "".join(metrics.json_line(row) for row in rows))  # NaN: null


def read_rows(workdir_or_path: str) -> list[dict]:
  """The rows of a probes.jsonl (or of `<workdir>/probes.jsonl`)."""
  path = workdir_or_path
  if tf.io.gfile.isdir(path):
    path = os.path.join(path, OUTPUT_FILE)
  with tf.io.gfile.GFile(path) as f:
    return [metrics.parse_json_line(line) for line in f if line.strip()]
